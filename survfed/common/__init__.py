"""Everything both the sites and the coordinator need, and no Flower."""

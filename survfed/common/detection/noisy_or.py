r"""The leaky noisy-OR of seed 003 (§V-D, eq. 5), in pure torch (no detector code).

.. math:: P = 1 - (1 - P_d) \prod_{i\ \text{present}} (1 - P_i)

with a learned leak :math:`P_d = \sigma(b)` — a dummy nodule for a cancer the detector missed.
Absent proposals are left out of the product, so a patient without any has :math:`P = P_d`. In
log space, :math:`\log(1 - P) = -\operatorname{softplus}(b) - \sum_i
\operatorname{softplus}(z_i)` from the per-nodule logits :math:`z_i`
(:func:`noisy_or_log_complement`); :func:`case_bce` is the loss over patients. Used by the
detector's case classifier (:mod:`survfed.common.detection.classifier`) and by the survival
model's noisy-OR cancer head (:mod:`survfed.common.survival.model`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["case_bce", "leaky_noisy_or", "noisy_or_log_complement"]


def _check_pair(values: torch.Tensor, present: torch.Tensor, name: str) -> torch.Tensor:
    if values.ndim != 2:
        raise ValueError(f"{name} must have shape (B, k), got {tuple(values.shape)}")
    if tuple(present.shape) != tuple(values.shape):
        raise ValueError(
            f"present must have the shape of {name} {tuple(values.shape)}, got "
            f"{tuple(present.shape)}"
        )
    return present.to(device=values.device, dtype=torch.bool)


def noisy_or_log_complement(
    nodule_logits: torch.Tensor, present: torch.Tensor, leak_logit: torch.Tensor
) -> torch.Tensor:
    r""":math:`\log(1 - P) = -\operatorname{softplus}(b) - \sum_{i\,\text{present}}
    \operatorname{softplus}(z_i)` per patient.

    Args:
        nodule_logits: ``(B, k)`` per-proposal cancer logits :math:`z_i` (absent entries may
            hold anything, also NaN).
        present: ``(B, k)`` bool, False = no proposal in that slot.
        leak_logit: scalar tensor :math:`b`, :math:`P_d = \sigma(b)`.

    Returns:
        ``(B,)`` :math:`\log(1 - P) \le -\operatorname{softplus}(b) < 0`.
    """
    present = _check_pair(nodule_logits, present, "nodule_logits")
    safe = torch.where(present, nodule_logits, torch.zeros_like(nodule_logits))  # no NaN grads
    terms = torch.where(present, F.softplus(safe), torch.zeros_like(nodule_logits))
    return -F.softplus(leak_logit.reshape(())) - terms.sum(dim=1)


def leaky_noisy_or(
    p_nodule: torch.Tensor, present: torch.Tensor, leak_logit: torch.Tensor
) -> torch.Tensor:
    r"""Leaky noisy-OR :math:`P = 1 - (1 - P_d)\prod_{i\,\text{present}}(1 - P_i)` per patient.

    The value is computed in log space, :math:`P = -\operatorname{expm1}(\log(1 - P_d) +
    \sum_i \operatorname{log1p}(-P_i))`, so tiny probabilities keep their precision; the
    gradient is that of the product form, :math:`\partial P / \partial P_i = (1 - P_d)
    \prod_{j \ne i}(1 - P_j)`, which is finite also at :math:`P_i \in \{0, 1\}` (where the log
    form's is not).

    Args:
        p_nodule: ``(B, k)`` per-proposal cancer probabilities in ``[0, 1]``.
        present: ``(B, k)`` bool, False = no proposal (left out of the product).
        leak_logit: scalar tensor :math:`b`, :math:`P_d = \sigma(b)`.

    Returns:
        ``(B,)`` case probabilities; :math:`P_d` for a patient without present proposals.
    """
    present = _check_pair(p_nodule, present, "p_nodule")
    with torch.no_grad():
        if bool(((p_nodule < 0) | (p_nodule > 1))[present].any()):
            raise ValueError("p_nodule must lie in [0, 1] where present")
    b = leak_logit.reshape(())
    one = torch.ones_like(p_nodule)
    log_q = torch.where(present, torch.log1p(-p_nodule.detach()), torch.zeros_like(p_nodule))
    value = -torch.expm1(log_q.sum(dim=1) - F.softplus(b.detach()))
    linear = torch.sigmoid(-b) * torch.where(present, one - p_nodule, one).prod(dim=1)
    return value + (linear.detach() - linear)


def case_bce(log_complement: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Mean BCE of the case probabilities over patients with a known label.

    :math:`-[y \log P + (1 - y)\log(1 - P)]` with :math:`\log(1 - P)` = ``log_complement``
    (from :func:`noisy_or_log_complement`) and :math:`\log P = \log(-\operatorname{expm1}(
    \log(1 - P)))`.

    Args:
        log_complement: ``(B,)`` :math:`\log(1 - P)` (< 0).
        labels: ``(B,)`` 0/1 float; NaN = unknown (left out, as
            :func:`survfed.common.survival.losses.two_task_loss` does).

    Returns:
        Scalar loss; an exact 0 with graph when no label is known.
    """
    if log_complement.ndim != 1:
        raise ValueError(f"log_complement must have shape (B,), got {tuple(log_complement.shape)}")
    labels = torch.as_tensor(labels, device=log_complement.device).to(log_complement.dtype)
    if labels.shape != log_complement.shape:
        raise ValueError(
            f"labels must have shape {tuple(log_complement.shape)}, got {tuple(labels.shape)}"
        )
    known = ~torch.isnan(labels)
    y = labels[known]
    if bool(((y != 0) & (y != 1)).any()):
        raise ValueError("labels must hold 0, 1 or NaN (unknown)")
    if not bool(known.any()):
        return log_complement.sum() * 0.0
    s = log_complement[known].clamp(max=-1e-12)
    log_p = torch.log(-torch.expm1(s))
    return -(y * log_p + (1 - y) * s).mean()

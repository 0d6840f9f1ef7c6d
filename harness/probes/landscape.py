"""Loss-landscape smoothness along the gradient (Santurkar et al. 2018, section 3.2).

At the current weights w with gradient g on the current batch, for each step size eta:
L(w - eta g) and its gradient g_eta, on the same batch. Logged: the range of those losses
(loss variation), max ||g - g_eta|| (gradient predictiveness) and max ||g - g_eta|| / ||eta g||
(effective beta-smoothness). Weights, gradients, BatchNorm buffers and RNG state are put
back exactly, so training continues as if the probe had not run.
"""

import torch

from harness import contract


@torch.no_grad()
def _global_norm(tensors) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(tensors)).norm()


def landscape_probe(model, loss_fn, etas) -> dict:
    """loss_fn() -> scalar loss of the current batch; call after backward, before optimizer.step."""
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        weights = torch._foreach_mul([p.detach() for p in params], 1.0)
        grads = torch._foreach_mul([p.grad for p in params], 1.0)
        buffers = [b.clone() for b in model.buffers()]
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    grad_norm = _global_norm(grads)

    losses, differences, smoothness = [], [], []
    try:
        for eta in etas:
            with torch.no_grad():
                torch._foreach_add_([p.detach() for p in params], grads, alpha=-eta)
            for p in params:
                p.grad = None
            loss = loss_fn()
            loss.backward()
            with torch.no_grad():
                difference = _global_norm(torch._foreach_sub([p.grad for p in params], grads))
            losses.append(loss.detach().float())
            differences.append(difference)
            smoothness.append(difference / (eta * grad_norm).clamp_min(1e-12))
            with torch.no_grad():
                torch._foreach_copy_([p.detach() for p in params], weights)
    finally:
        with torch.no_grad():
            torch._foreach_copy_([p.detach() for p in params], weights)
            for p, g in zip(params, grads):
                p.grad = g
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    losses = torch.stack(losses)
    return {contract.LANDSCAPE_LOSS_VARIATION: losses.max() - losses.min(),
            contract.LANDSCAPE_GRAD_PREDICTIVENESS: torch.stack(differences).max(),
            contract.LANDSCAPE_BETA_SMOOTHNESS: torch.stack(smoothness).max()}

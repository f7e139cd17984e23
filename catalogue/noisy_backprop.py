"""Backprop under noisy feedback updates, as a configuration any layer can run.

Backprop has no B of its own, so noise on B's updates has nothing to perturb. For a fair
comparison with the rules that learn B, its error is carried backward by a *transported copy*
of W: a B that starts equal to W and takes W's every update. That is Kolen-Pollack's
mechanism (B receives W's gradient) with its decay set to the optimizer's weight decay on W
(the rule's alpha multiplies ||B||^2, whose gradient is 2 alpha B, so alpha = wd / 2), run
at B's plain learning rate: without noise B stays equal to W exactly and the run is backprop.
The noise then perturbs only the copy; nothing pulls it back to W, and W is never perturbed.
"""

from __future__ import annotations

from typing import Any

MECHANISM = "kolen_pollack"  # the rule whose B takes W's updates
HELP = ("backprop has no B: the noise perturbs a transported copy of W that carries its error "
        "backward (it starts equal to W and takes W's every update, so without noise it is "
        "backprop exactly); forward weights are never perturbed, for any rule")


def transported_copy(weight_decay: float) -> dict[str, Any]:
    """The training options that make a run backprop through a transported copy of W."""
    return {"rule": MECHANISM, "copy_weights": True, "feedback_lr_multiplier": 1.0,
            "metaparameters": {"alpha": weight_decay / 2}}

"""The runtime (torch, onnx, onnx-int8) of the commands that load their model eagerly.

zeroshot and the evaluation commands open their encoder with `histovl.embed.encoders.open_encoder`
(lazily, through the identity cache). The commands that load the model up front (few-shot, predict,
slides embed, stainalign, index build) call `runtime_encoder` instead: the same
`histovl.models.runtime.apply_runtime` wrapper, so the towers are exported once per weights id,
the parity gate is recorded in ``options.runtime_parity`` (run.json), and the encoder's
``weights_id`` names the runtime (the embedding cache never mixes runtimes). docs/runtime.md.

A fitted head or index records the weights id of the encoder it was made with; `torch_weights_id`
is that id without the runtime, so a head fitted under one runtime applies under another (the
parity gate bounds how far their embeddings differ).

Example:
    >>> torch_weights_id("tiny-seed0|runtime=onnx-int8")
    'tiny-seed0'
"""

from __future__ import annotations

from typing import Any, cast

from histovl.options import RunOptions

#: What `histovl.models.runtime.RuntimeEncoder.weights_id` appends to the torch encoder's id.
RUNTIME_MARK = "|runtime="


def runtime_encoder(model: Any, options: RunOptions) -> Any:
    """`model` (a spec or a loaded encoder) loaded on ``options.device`` and run by ``options.runtime``."""
    from histovl.models import load_model
    from histovl.models.runtime import apply_runtime

    encoder = load_model(model, device=options.device, trust_checkpoint=options.trust_checkpoint)
    return cast(Any, apply_runtime(encoder, options))


def torch_weights_id(weights_id: str) -> str:
    """The weights id without the runtime an ONNX encoder appends (torch's id is unchanged)."""
    return str(weights_id).split(RUNTIME_MARK, 1)[0]


def runtime_of(weights_id: str) -> str:
    """The runtime a weights id names (``torch`` when none)."""
    _, mark, runtime = str(weights_id).partition(RUNTIME_MARK)
    return runtime if mark else "torch"

"""What an ONNX export may be asked for (opsets, Conv4d's form), checked without torch: the
daemon checks an export request when it is made, and imports torch only to run the export
(tesserad.nn.onnx_export)."""

from __future__ import annotations

from tesserad.errors import InvalidArgument

# torch's exporter writes opset 18 and converts down with onnx's version converter, which has no
# adapter taking Gemm (every built-in family's Linear head) below its opset-13 form; how far down
# a given model goes depends on its other ops (a ReLU MLP stops at 14, cnn4d's Pad at 18).
MIN_OPSET = 13


def check_conv4d(conv4d: str) -> None:
    """InvalidArgument unless `conv4d` names a way `export_onnx` writes Conv4d layers."""
    if conv4d not in ("auto", "decomposed", "native"):
        raise InvalidArgument(f"conv4d: must be auto, decomposed or native, got {conv4d!r}")


def check_opset(opset: int) -> None:
    """InvalidArgument for an opset (0: the exporter's default) below the oldest the exporter
    writes or past the newest the installed onnx knows, naming both."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    # Outside these the exporter would fail to convert and silently write its default opset instead.
    if opset == 0 or MIN_OPSET <= opset <= newest:
        return
    where = (
        f"below the oldest this daemon's ONNX exporter writes ({MIN_OPSET})"
        if opset < MIN_OPSET
        else f"past the newest this daemon's onnx knows ({newest})"
    )
    raise InvalidArgument(
        f"opset {opset} is {where}; ask for {MIN_OPSET} to {newest}, or 0 for the exporter's default"
    )


def opset_refusal(asked: int, written: int) -> str:
    """Why an export asked for opset `asked` was refused when the exporter wrote `written`: the
    converter could not take one of the model's ops there. Another opset may work on either side
    of `asked`, so `written` is offered as what it is, not as the one to ask for."""
    way = "down" if asked < written else "up"
    return (
        f"onnx export: the exporter cannot write this model at opset {asked}, the opset asked for: "
        f"it wrote opset {written} (onnx's version converter has no way {way} from {written} to "
        f"{asked} for one of its ops), so nothing was exported; ask for another opset ({written} is "
        "the opset this model exports at), or 0 for the exporter's default"
    )

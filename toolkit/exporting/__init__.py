"""Export: merge an adapter and export ONNX variants through Optimum, each gated on parity with PyTorch
(merged, variants, parity), or several adapters on one ONNX base graph (adapters).

The names below are imported on first use (PEP 562): `from toolkit.exporting import ExportError` does not load
torch and transformers, so the command line starts fast."""

import importlib

_NAMES = {"AdapterExportConfig": "adapters", "export_adapters": "adapters", "ExportError": "common",
          "ExportConfig": "merged", "export": "merged", "gate": "parity"}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'toolkit.exporting' has no attribute '{name}'")
    return getattr(importlib.import_module(f"toolkit.exporting.{_NAMES[name]}"), name)

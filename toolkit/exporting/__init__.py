"""Export: merge an adapter and export ONNX variants through Optimum, each gated on parity with PyTorch
(merged, variants, parity), or several adapters on one ONNX base graph (adapters)."""

from toolkit.exporting.adapters import AdapterExportConfig, export_adapters
from toolkit.exporting.common import ExportError
from toolkit.exporting.merged import ExportConfig, export
from toolkit.exporting.parity import gate

__all__ = ["AdapterExportConfig", "ExportConfig", "ExportError", "export", "export_adapters", "gate"]

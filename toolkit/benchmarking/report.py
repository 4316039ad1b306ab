"""The inference benchmark's table (results.md) and figure (latency.png)."""

from pathlib import Path

import numpy as np

from toolkit.benchmarking.results import machine_line


def _variant_line(v: str, r: dict) -> str:
    return (f"| {v} | {r['size_mb']:.1f} | {r['peak_memory']['above_baseline_mb']:.0f} | "
            f"{r['questions_per_second']:.1f} | {r['throughput_ratio_vs_baseline']:.2f} | {r['exact']:.2f} | "
            f"{r['f1']:.2f} | {r.get('HasAns_f1', float('nan')):.2f} | {r.get('NoAns_f1', float('nan')):.2f} | "
            f"{r['answer_agreement_vs_baseline']:.1f} | {r['span_agreement_vs_baseline']:.1f} |")


def _peer_line(kind: str, peer: dict, base_qps: float) -> str:
    if "skipped" in peer:
        return f"| peer: {kind} | – | – | not run: {peer['skipped']} | | | | | | | |"
    return (f"| peer: {kind} | – | – | {peer['questions_per_second']:.1f} | "
            f"{peer['questions_per_second'] / base_qps:.2f} | {peer['exact']:.2f} | {peer['f1']:.2f} | "
            f"{peer.get('HasAns_f1', float('nan')):.2f} | {peer.get('NoAns_f1', float('nan')):.2f} | – | – |")


def _peaks_line(results: dict) -> str:
    peaks, rows = results["peaks"], results["variants"]
    return ("Dense matmul peaks here (GOP/s, multiply-add = 2): "
            f"fp32 {peaks['fp32_torch'] / 1e9:.1f} (torch) / {peaks['fp32_onnxruntime'] / 1e9:.1f} (ONNX Runtime), "
            f"int8 {peaks['int8_u8s8_onnxruntime'] / 1e9:.1f} U8S8 / {peaks['int8_u8u8_onnxruntime'] / 1e9:.1f} U8U8 "
            f"(ONNX Runtime MatMulInteger{', VNNI' if peaks['int8_vnni'] else ', no VNNI'}), "
            f"bf16 {peaks['bf16_torch'] / 1e9:.1f} (torch{'' if peaks['bf16_native'] else ', not native on this CPU'}). "
            "Fraction of the peak that applies (int8 for int8 variants, bf16 for bf16, the faster fp32 otherwise) reached over the whole eval "
            "pass: " + ", ".join(f"{v} {100 * r['eval_roofline_fraction']:.0f}%" for v, r in rows.items()) + ".")


def markdown(results: dict) -> str:
    rows = results["variants"]
    base = results["baseline"]
    keys = list(next(iter(rows.values()))["latency"])
    lines = [f"# Benchmark `{results['name']}` ({results['date']})", "", machine_line(results),
             f"Eval set: {results['eval_set']['questions']} questions ({results['eval_set']['spec']}), "
             f"{results['eval_set']['windows']} windows; no-answer threshold {results['eval_set']['null_threshold']:.3f}.",
             f"Dense fp32 matmul (torch): {results['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s. "
             f"Ratios are against `{base}`, measured in the same run.", "",
             "| variant | size MB | peak RSS MB | q/s (eval) | × q/s | EM | F1 | HasAns F1 | NoAns F1 | agree % | span agree % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_variant_line(v, r) for v, r in rows.items()]
    lines += [_peer_line(kind, peer, rows[base]["questions_per_second"]) for kind, peer in results.get("peers", {}).items()]
    lines += ["", _peaks_line(results)]
    lines += ["", "Latency per batch (ms, p50 / p95), speed-up of the mean vs the baseline, and fraction of the "
              "matmul peak achieved:", "",
              "| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for v, r in rows.items():
        cells = [f"{r['latency'][k]['p50_ms']:.1f} / {r['latency'][k]['p95_ms']:.1f} "
                 f"(×{r['speedup_vs_baseline'][k]:.2f}, {100 * r['roofline_fraction'][k]:.0f}%)" for k in keys]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    why = results.get("skipped_why") or {v: "no usable CUDA" for v in results["skipped"]}
    if why:
        lines += ["", "Not run here: " + "; ".join(f"{v} ({reason})" for v, reason in why.items()) + "."]
    return "\n".join(lines) + "\n"


def accuracy_bars(results: dict) -> tuple[list[str], list[float], list[float]]:
    """(names, EM, F1) of every variant and every peer that ran, for the accuracy panel."""
    scored = {**results["variants"],
              **{f"peer: {k}": p for k, p in results.get("peers", {}).items() if "skipped" not in p}}
    return list(scored), [r["exact"] for r in scored.values()], [r["f1"] for r in scored.values()]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["variants"]
    seqs = results["config"]["seq_lens"]
    sizes = results["config"]["batch_sizes"]
    fig, axes = plt.subplots(1, len(seqs) + 1, figsize=(5 * (len(seqs) + 1), 4))
    for ax, seq in zip(axes, seqs):
        for v, r in rows.items():
            ax.plot(sizes, [r["latency"][f"b{b}-{seq}"]["mean_ms"] for b in sizes], marker="o", label=v)
        ax.set_xscale("log", base=2), ax.set_yscale("log")
        ax.set_xlabel("batch size"), ax.set_ylabel("mean latency per batch (ms)"), ax.set_title(f"length: {seq}")
        ax.grid(alpha=0.3), ax.legend(fontsize=8)
    ax = axes[-1]
    names, em, f1 = accuracy_bars(results)
    x = np.arange(len(names))
    ax.bar(x - 0.2, em, 0.4, label="EM"), ax.bar(x + 0.2, f1, 0.4, label="F1")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8), ax.set_ylabel("%"), ax.set_title("accuracy")
    ax.legend(), ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

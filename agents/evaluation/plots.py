"""The evaluation's plots: a metric against horizon beside its baseline."""
from __future__ import annotations

from pathlib import Path


def plot_metric(metrics: dict, key: str, baseline: str | None, ylabel: str, path: str | Path,
                labels: tuple[str, str] = ("dream", "copy last frame"), title: str | None = None) -> Path:
    """One metric (a dotted key of `metrics`) against horizon, beside its baseline, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(metrics["horizons"], metric_at(metrics, key), "o-", label=labels[0])
    if baseline is not None:
        ax.plot(metrics["horizons"], metric_at(metrics, baseline), "s--", label=labels[1])
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("horizon (frames after the real context)")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel}: dream vs real, {metrics['windows']} held-out windows")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def metric_at(metrics: dict, dotted: str):
    """`metrics["a"]["b"]` for `"a.b"`."""
    value = metrics
    for part in dotted.split("."):
        value = value[part]
    return value


def save_strip(rows: dict, times: list[int], path: str | Path, cell: tuple[float, float] = (1.0, 1.1)) -> Path:
    """One row of frames per model (uint8 ``(len(times), H, W, 3)``), labelled with names and frame numbers
    (`cell`: inches per frame, width and height)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(times), figsize=(cell[0] * len(times) + 1.2, cell[1] * len(rows) + 0.3),
                             squeeze=False)
    for r, (name, strip) in enumerate(rows.items()):
        for c, t in enumerate(times):
            ax = axes[r, c]
            ax.imshow(strip[c].numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.3)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # long model names stay inside the image
    plt.close(fig)
    return path

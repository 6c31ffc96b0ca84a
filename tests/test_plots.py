"""The book's figures: a short log axis still has labelled ticks, and a point flagged unstable is drawn hollow."""

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402

from ipcbench import plots  # noqa: E402


def _sweep(medians, unstable):
    sizes = [1024 * 4**i for i in range(len(medians))]
    return pd.DataFrame({"metric": "bandwidth", "unit": "B/s", "variant": "copy", "size_bytes": sizes, "median": medians,
                         "ci_low": [m * 0.9 for m in medians], "ci_high": [m * 1.1 for m in medians],
                         "unstable": unstable})  # fmt: skip


def test_a_log_axis_within_a_decade_or_two_labels_three_ticks_or_more():
    ax = plots.size_sweep(_sweep([5e9, 9e9, 2.2e10, 1.5e10], [False] * 4), "bandwidth")
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    lo, hi = ax.get_ylim()
    shown = [t for t in ax.get_yticks() if lo <= t <= hi]
    assert len(shown) >= 3 and "10 GB/s" in labels and "20 GB/s" in labels
    wide = plots.size_sweep(_sweep([1e6, 1e8, 1e10, 1e12], [False] * 4), "bandwidth")
    wide.figure.canvas.draw()
    lo, hi = wide.get_ylim()
    assert [t for t in wide.get_yticks() if lo <= t <= hi] == [1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12]  # decades only


def test_points_flagged_unstable_are_hollow_and_the_legend_says_so():
    ax = plots.size_sweep(_sweep([1e9, 2e9, 3e9], [False, True, False]), "bandwidth")
    hollow = [ln for ln in ax.get_lines() if ln.get_markerfacecolor() == "white" and len(ln.get_xdata())]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [4096]
    assert "hollow: flagged unstable" in [t.get_text() for t in ax.get_legend().get_texts()]
    calm = plots.size_sweep(_sweep([1e9, 2e9], [False, False]), "bandwidth")
    assert "hollow: flagged unstable" not in [t.get_text() for t in calm.get_legend().get_texts()]


def test_a_figure_wider_than_the_column_gets_text_that_stays_readable_when_scaled_down(tmp_path):
    import matplotlib.pyplot as plt

    plots.use_style()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))  # shown at half size in the column
    for ax in axes:
        ax.plot([1, 2, 3], [3, 1, 2], label="series")
        ax.set_title("a panel", fontsize=8)
        ax.legend(fontsize=7)
    fig.savefig(tmp_path / "wide.png")
    need = plots.MIN_PT * 15 / plots.COLUMN_IN
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    assert sizes and min(sizes) >= need - 1e-9
    narrow, ax = plt.subplots(figsize=(6, 3))
    ax.set_title("small", fontsize=10)
    narrow.savefig(tmp_path / "narrow.png")
    assert ax.title.get_fontsize() == 10  # a figure within the column is left as drawn
    plt.close("all")


def test_a_hand_drawn_log_axis_gets_plain_labels_at_1_2_5():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [0.6, 1.0, 1.9])
    ax.set_yscale("log")
    plots.readable_log_axis(ax.yaxis)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert "1" in labels and ("2" in labels or "0.5" in labels) and not any("10^" in x or "times" in x for x in labels)
    plt.close(fig)


def test_errorbars_draw_each_interval_around_its_value_and_refuse_one_that_does_not_hold_it():
    import matplotlib.pyplot as plt
    import pytest

    rows = pd.DataFrame({"median": [1.0, 2.0], "ci_low": [0.5, 1.5], "ci_high": [1.5, 3.0]})
    fig, ax = plt.subplots()
    c = plots.errorbars(ax, [1, 2], rows, scale=1e3, label="x")
    seg = c.lines[2][0].get_segments()
    assert [tuple(s[:, 1]) for s in seg] == [(500.0, 1500.0), (1500.0, 3000.0)]
    with pytest.raises(ValueError, match="does not hold its median"):
        plots.errorbars(ax, [1, 2], rows.assign(ci_low=[1.2, 1.5]))
    plt.close(fig)


def test_interval_bars_draw_each_value_with_its_interval_either_way():
    import matplotlib.pyplot as plt

    rows = pd.DataFrame({"tokens/s": [10.0, 20.0], "low": [9.0, 18.0], "high": [12.0, 21.0]})
    fig, ax = plt.subplots()
    bars = plots.interval_bars(ax, ["a", "b"], rows, value="tokens/s", low="low", high="high", horizontal=True)
    assert [b.get_width() for b in bars.patches] == [10.0, 20.0]
    seg = bars.errorbar.lines[2][0].get_segments()
    assert [tuple(s[:, 0]) for s in seg] == [(9.0, 12.0), (18.0, 21.0)]
    up = plots.interval_bars(ax, [0, 1], rows.rename(columns={"tokens/s": "median", "low": "ci_low", "high": "ci_high"}),
                             scale=2.0, width=0.4)  # fmt: skip
    assert [b.get_height() for b in up.patches] == [20.0, 40.0]
    plt.close(fig)

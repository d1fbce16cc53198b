"""The report's aggregation over seeds, on made-up metrics: the mean and spread of each metric per split, the
DiverseGRPO / Flow-GRPO ratios per seed, the machine-readable summary, Table 1 per split, and the Pareto plot's
final stars for any reward name."""

import matplotlib
import numpy as np
import pandas as pd
import pytest

from diversegrpo import figures, tables

REWARD = "pick-score.v2"  # '-' and '.': no attribute name of an itertuples row


def long_metrics(seeds, values, error=0.01) -> pd.DataFrame:
    """The evaluate stage's long rows: values[(method, seed, split)] = {metric: value}; each gets a standard error."""
    rows = []
    for (method, seed, split), metrics in values.items():
        if seed not in seeds:
            continue
        labels = {"backbone": "toy", "reward": "" if method == "base" else REWARD, "method": method, "seed": seed,
                  "split": split, "prompt": ""}
        for metric, value in metrics.items():
            rows.append({**labels, "scope": "overall", "metric": metric, "value": value})
            rows.append({**labels, "scope": "overall_se", "metric": metric, "value": error * (1 + seed)})
        rows.append({**labels, "scope": "prompt", "prompt": "a red disc", "metric": "diversity", "value": -1.0})
    return pd.DataFrame(rows)


def made_up() -> dict:
    values = {}
    for split, shift in (("eval", 0.0), ("train", 0.1)):
        for seed in (0, 1, 2):
            values[("base", seed, split)] = {"diversity": 0.8 + shift, "mode_entropy": 0.9, f"reward_{REWARD}": 0.7}
            values[("flow_grpo", seed, split)] = {"diversity": 0.2 + 0.1 * seed + shift, "mode_entropy": 0.1 * seed,
                                                  f"reward_{REWARD}": 0.75}
            values[("diverse_grpo", seed, split)] = {"diversity": 0.6 + shift, "mode_entropy": 0.8,
                                                     f"reward_{REWARD}": 0.74 + 0.01 * seed}
    return values


def test_mean_and_sample_std_over_seeds_per_split():
    aggregated = tables.aggregate(long_metrics([0, 1, 2], made_up()))
    mean, spread, per_seed = aggregated.mean, aggregated.spread, aggregated.per_seed
    row = lambda t, split, method: t[(t.split == split) & (t.method == method)].iloc[0]  # noqa: E731
    flow = [0.2, 0.3, 0.4]
    assert row(mean, "eval", "flow_grpo").diversity == pytest.approx(np.mean(flow))
    assert row(spread, "eval", "flow_grpo").diversity == pytest.approx(np.std(flow, ddof=1))
    assert row(mean, "train", "flow_grpo").diversity == pytest.approx(np.mean(flow) + 0.1)
    assert row(spread, "eval", "base").diversity == pytest.approx(0.0)  # seeds agree: no spread, not the bootstrap's
    assert len(per_seed) == 3 * 3 * 2


def test_one_seed_keeps_its_bootstrap_standard_error():
    aggregated = tables.aggregate(long_metrics([1], made_up()))
    mean, spread = aggregated.mean, aggregated.spread
    flow = spread[(spread.split == "eval") & (spread.method == "flow_grpo")].iloc[0]
    assert flow.diversity == pytest.approx(0.02)  # seed 1's overall_se
    assert mean[(mean.split == "eval") & (mean.method == "flow_grpo")].iloc[0].diversity == pytest.approx(0.3)


def test_ratios_per_seed_and_missing_where_flow_grpo_is_zero():
    per_seed = tables.aggregate(long_metrics([0, 1, 2], made_up())).per_seed
    ratios = tables.ratios(per_seed)
    eval_ratios = ratios[ratios.split == "eval"].set_index("seed")
    assert list(eval_ratios.index) == [0, 1, 2]
    assert eval_ratios.ratio_diversity.tolist() == pytest.approx([0.6 / 0.2, 0.6 / 0.3, 0.6 / 0.4])
    assert eval_ratios.ratio_reward.tolist() == pytest.approx([0.74 / 0.75, 0.75 / 0.75, 0.76 / 0.75])
    assert pd.isna(eval_ratios.ratio_mode_entropy[0]) and eval_ratios.ratio_mode_entropy[2] == pytest.approx(4.0)
    without = per_seed[per_seed.method != "flow_grpo"]
    assert tables.ratios(without).empty  # Flow-GRPO not in the run matrix: no ratios
    assert "ratio_reward_se" not in ratios  # no standard errors given, none made up


def test_ratio_standard_errors_combine_the_two_runs_bootstrap_ones():
    metrics = long_metrics([0, 1, 2], made_up())  # every metric's standard error: 0.01 x (1 + seed)
    aggregated = tables.aggregate(metrics)
    ratios = tables.ratios(aggregated.per_seed, aggregated.errors).query("split == 'eval'")
    seed_1 = ratios.set_index("seed").loc[1]
    # reward: 0.75 / 0.75 with both standard errors 0.02 -> hypot(0.02, 1 x 0.02) / 0.75
    assert seed_1.ratio_reward_se == pytest.approx(np.hypot(0.02, 0.02) / 0.75)
    # diversity 0.6 / 0.3 = 2: the first-order error is 2 x hypot(0.02 / 0.6, 0.02 / 0.3)
    assert seed_1.ratio_diversity_se == pytest.approx(2 * np.hypot(0.02 / 0.6, 0.02 / 0.3))
    assert pd.isna(ratios.set_index("seed").loc[0].ratio_mode_entropy_se)  # no ratio (Flow-GRPO's is 0): no error


def test_summary_and_table_1_per_split():
    seeds = [0, 1, 2]
    metrics = long_metrics(seeds, made_up())
    aggregated = tables.aggregate(metrics)
    per_seed = aggregated.per_seed
    split_tables = tables.split_tables(aggregated.mean, aggregated.spread, [REWARD])
    assert list(split_tables) == ["eval", "train"]
    ratios = tables.ratios(per_seed, aggregated.errors)
    summary = tables.summary(split_tables, per_seed, ratios, seeds)
    flow = summary["eval"]["toy"][REWARD]["flow_grpo"]["diversity"]
    assert flow == {"mean": pytest.approx(0.3), "spread": pytest.approx(0.1),
                    "per_seed": pytest.approx([0.2, 0.3, 0.4])}
    assert summary["train"]["toy"][REWARD]["base"]["diversity"]["per_seed"] == pytest.approx([0.9] * 3)
    assert summary["seeds"] == seeds
    first = summary["ratios"]["eval"]["toy"][REWARD][0]
    # seed 0: both standard errors 0.01; diversity 0.6 / 0.2, reward 0.74 / 0.75
    diversity_se, reward_se = np.hypot(0.01, 3.0 * 0.01) / 0.2, np.hypot(0.01, 0.74 / 0.75 * 0.01) / 0.75
    assert first == {"seed": 0, "diversity": pytest.approx(3.0), "mode_entropy": None,
                     "reward": pytest.approx(0.74 / 0.75, abs=1e-6), "diversity_se": pytest.approx(diversity_se),
                     "mode_entropy_se": None, "reward_se": pytest.approx(reward_se, abs=1e-6)}
    markdown = tables.table1_markdown(split_tables, ratios, seeds)
    assert "Mean over the 3 seeds 0, 1, 2 ± the sample standard deviation over seeds." in markdown
    eval_part, train_part = markdown.split("## train split (training captions)")
    assert "## eval split (held-out captions)" in eval_part
    assert f"| toy | {REWARD} | flow_grpo | 0.3000 ± 0.1000 |" in eval_part
    assert f"| toy | {REWARD} | flow_grpo | 0.4000 ± 0.1000 |" in train_part
    # the ratios with their standard errors; Flow-GRPO's mode entropy is 0 -> none
    assert f"| toy | {REWARD} | 0 | 3.000 ± 0.158 | — | 0.987 ± 0.019 |" in eval_part
    latex = tables.table1_latex(split_tables, ratios, seeds)
    assert latex.count(r"\begin{tabular}") == latex.count(r"\end{tabular}") == 2 and "—" not in latex


def test_one_seed_says_its_spread_is_the_bootstrap_error():
    assert "bootstrap standard error" in tables.spread_note([4]) and "Seed 4" in tables.spread_note([4])


def test_pareto_plot_draws_the_final_stars_of_any_reward_name(monkeypatch, tmp_path):
    """itertuples renames a column such as reward_pick-score.v2: the stars must be found by column access."""
    seeds = [0, 1]
    aggregated = tables.aggregate(long_metrics(seeds, made_up()))
    mean, spread = aggregated.mean, aggregated.spread
    split_tables = tables.split_tables(mean, spread, [REWARD])
    curve = pd.DataFrame({"iteration": [0, 1], "diversity": [0.8, 0.5], "reward_reward": [0.7, 0.75]})
    data = figures.pareto_data({("toy", REWARD, m, s): curve for m in ("flow_grpo", "diverse_grpo") for s in seeds})
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    figures.plot_pareto(data, split_tables, tmp_path / "pareto.png")
    (fig,) = drawn
    axes = fig.get_axes()
    assert len(axes) == 2  # a panel per split
    for ax in axes:
        stars = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
        assert len(stars) == 3, ax.get_title()  # base, flow_grpo, diverse_grpo
    assert len(axes[0].lines) == 2 and not axes[1].lines  # training paths on the held-out split only


def test_a_zero_that_rounding_leaves_negative_prints_as_zero():
    from diversegrpo.tables import _fmt

    printed = (_fmt(-1e-9), _fmt(-0.0), _fmt(-0.5), _fmt(0.12345, 0.01))
    assert printed == ("0.0000", "0.0000", "-0.5000", "0.1235 ± 0.0100")


def test_the_k_each_adaptive_run_chose_is_listed_under_table_1(tmp_path):
    import json

    from diversegrpo.stages.report import adaptive_k_records, run_config

    assert tables.adaptive_k_markdown([]) == ""
    for name, record in (("fixed", None), ("auto", {"share": 0.66, "sa_steps": 1, "decided": 0.7123, "budget": [0]})):
        (tmp_path / name).mkdir()
        run = {"method": {}, "adaptive_k": record} if record else {"method": {}}
        (tmp_path / name / "config.json").write_text(json.dumps(run))
    records = adaptive_k_records([("toy", "colour", "fixed", 0), ("toy", "colour", "auto", 1)],
                                 [run_config(str(tmp_path / name)) for name in ("fixed", "auto")])
    assert records == [{"backbone": "toy", "reward": "colour", "method": "auto", "seed": 1, "share": 0.66,
                        "sa_steps": 1, "decided": 0.7123}]
    assert "| toy | colour | auto | 1 | 0.66 | 1 | 0.712 |" in tables.adaptive_k_markdown(records).splitlines()


def test_the_paper_s_claims_are_checked_seed_by_seed():
    from diversegrpo import claims

    values = made_up()  # no valid share on the training captions: that claim is not checked there
    values[("sa_reg", 0, "eval")] = {"diversity": 0.1, "mode_entropy": 0.5, f"reward_{REWARD}": 0.75}
    values[("sa_reg", 1, "eval")] = {"diversity": 0.4, "mode_entropy": 0.5, f"reward_{REWARD}": 0.75}
    for seed in (0, 1, 2):
        values[("dominated", seed, "eval")] = {"diversity": 0.5, "mode_entropy": 0.8, f"reward_{REWARD}": 0.69}
    for seed in (0, 1, 2):  # held-out valid shares: more than Flow-GRPO's passes, 0.06 less fails
        for method, valid in (("flow_grpo", 0.8), ("diverse_grpo", 0.9), ("dominated", 0.74)):
            values[(method, seed, "eval")]["valid_share"] = valid
    metrics = long_metrics([0, 1, 2], values)  # standard errors 0.01 x (1 + seed)
    aggregated = tables.aggregate(metrics)
    table = claims.check(aggregated.per_seed, aggregated.errors, ["diverse_grpo", "dominated"])
    assert set(table.method) == {"diverse_grpo", "dominated"}  # sa_reg and flow_grpo are references, not variants
    row = table.set_index(["split", "method", "seed"]).loc
    # Flow-GRPO's gain 0.05 over base, in standard errors hypot(se, se) with se = 0.01 x (1 + seed)
    gains = [0.05 / np.hypot(0.01 * (1 + s), 0.01 * (1 + s)) for s in (0, 1, 2)]
    assert [row["train", "diverse_grpo", s].headroom for s in (0, 1, 2)] == pytest.approx(gains)
    assert [row["train", "diverse_grpo", s].pass_headroom for s in (0, 1, 2)] == [True, False, False]  # >= 3
    assert [row["eval", "diverse_grpo", s].pass_headroom for s in (0, 1, 2)] == [True, True, True]  # > 0
    assert row["eval", "diverse_grpo", 2].collapse == pytest.approx(0.2 / 0.9)
    assert row["eval", "diverse_grpo", 2].diversity == pytest.approx(0.6 / 0.4)
    assert row["eval", "diverse_grpo", 0].quality == pytest.approx(0.74 / 0.75)
    assert row["eval", "diverse_grpo", 0].pass_quality  # >= 0.98
    assert pd.isna(row["train", "diverse_grpo", 0].valid) and row["train", "diverse_grpo", 0].pass_valid is None
    assert row["eval", "diverse_grpo", 0].valid == pytest.approx(0.1) and row["eval", "diverse_grpo", 0].pass_valid
    assert row["eval", "dominated", 0].valid == pytest.approx(-0.06) and not row["eval", "dominated", 0].pass_valid
    # SA-Reg between Flow-GRPO (0.2 in seed 0, 0.3 in seed 1) and the variant (0.6): not in seed 0, in seed 1
    assert [row["eval", "diverse_grpo", s].pass_sa_reg_between for s in (0, 1, 2)] == [False, True, None]
    assert not row["eval", "dominated", 0].undominated and row["eval", "diverse_grpo", 0].undominated
    assert [row["eval", "diverse_grpo", s]["all"] for s in (0, 1, 2)] == [False, True, True]
    assert [row["train", "diverse_grpo", s]["all"] for s in (0, 1, 2)] == [True, False, False]

    text = claims.markdown(table)
    assert "| diverse_grpo | 1 | 1.8 ✓ | 0.111 ✓ | 2.00 ✓ | 1.000 ✓ | +0.100 ✓ | ✓ | ✓ | ✓ |" in text
    train = text.split("### train split")[1]  # no valid share, no SA-Reg run: — , and `all` over the rest
    assert "| toy | pick-score.v2 | diverse_grpo | 0 | 3.5 ✓ | 0.000 ✓ | 2.33 ✓ | 0.987 ✓ | — | ✓ | — | ✓ |" in train
    assert "toy diverse_grpo: every claim in 3 of 6 cells; headroom 4," in text
    assert claims.summary(table)["toy"]["dominated"] == {"cells": 3, "all": 0, "headroom": 3, "collapse": 3,
                                                         "diversity": 2, "quality": 0, "valid": 0,
                                                         "undominated": 0, "sa_reg_between": 1}
    assert claims.markdown(claims.check(aggregated.per_seed, aggregated.errors, [])) == ""

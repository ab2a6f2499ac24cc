"""docs/lifetime_rewards.md from the runs of learned intrinsic rewards over lifetimes (issue 12).

    python scripts/lifetime_report.py [--root outputs/lifetime] [--lifetimes 100] [--chunk 100] [--kept docs/lifetime_rewards/runs.tar.xz]

Finds every completed run under --root (a run dir has summary.json and config.yaml), groups runs by
environment and arm (the learned reward; the baselines extrinsic_ep, extrinsic_life, count,
oracle; the ablations feedforward, episodic, no_value), runs each on the same --lifetimes test
lifetimes (drawn with the run's eval_seed, the reward frozen) recording what happened, cached in
<run>/lifetimes_test.pt, and fills docs/src/lifetime_rewards.md into docs/lifetime_rewards.md with
figures in docs/lifetime_rewards/. Every interval is a 95% CI and every verdict comes from
metarun.stats: the learned reward's figures vary over meta-training seeds (each seed: the mean
over the test lifetimes); a baseline has nothing to meta-train, so its figures vary over the test
lifetimes. Speed figures come from --bench (lines written by scripts/bench_lifetimes.py --out).
The run data the doc reads (summaries, configs, the cached test lifetimes, the bench lines under
--root; and the runs' metrics) is kept beside it in --kept and unpacked into a missing --root, so a
fresh checkout rebuilds the doc without the runs' work dir; with no run at all the doc is left as it is (exit 2).
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docgen import keep_runs, md_table, render, restore_runs  # noqa: E402

from metarun import checkpoint  # noqa: E402
from metarun.stats import compare, fmt_ci, mean_ci, verdict  # noqa: E402
from metarun.train import build  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENVS = ("empty_rooms", "random_abc", "key_box", "nonstationary_abc")
TITLES = {"empty_rooms": "Empty Rooms", "random_abc": "Random ABC", "key_box": "Key-Box", "nonstationary_abc": "Non-stationary ABC"}
BASELINES = ("extrinsic_ep", "extrinsic_life", "count", "oracle")
ABLATIONS = ("feedforward", "episodic", "no_value")
LABELS = {"learned": "learned reward", "extrinsic_ep": "Extrinsic-EP", "extrinsic_life": "Extrinsic-LIFE",
          "count": "count bonus", "oracle": "hand-designed", "feedforward": "feed-forward reward",
          "episodic": "episodic meta-objective", "no_value": "no lifetime value"}
# The paper's qualitative claims per environment (a claim whose runs are missing is listed as not run).
CLAIMS = {"empty_rooms": ["Empty Rooms: the learned reward beats Extrinsic-EP and Extrinsic-LIFE",
                          "Empty Rooms: the learned reward explores until the goal is found, then exploits"],
          "random_abc": ["Random ABC: the learned reward beats Extrinsic-EP and Extrinsic-LIFE",
                         "Random ABC: the learned reward learns to avoid B"],
          "key_box": ["Key-Box: the learned reward beats Extrinsic-EP and Extrinsic-LIFE",
                      "Key-Box: the extrinsic baselines fail to open boxes (the learned reward opens more)"],
          "nonstationary_abc": ["Non-stationary ABC: the learned reward beats Extrinsic-EP and Extrinsic-LIFE",
                                "Non-stationary ABC: the learned reward changes around the swap"]}
COLORS = {"learned": "C3", "extrinsic_ep": "C0", "extrinsic_life": "C1", "count": "C2", "oracle": "C7",
          "feedforward": "C4", "episodic": "C5", "no_value": "C6"}


# ---- runs ------------------------------------------------------------------------------------

def arm_of(cfg):
    if cfg.algo.reward != "learned":
        return cfg.algo.reward
    if not cfg.model.recurrent:
        return "feedforward"
    if cfg.algo.objective == "episodic":
        return "episodic"
    if not cfg.algo.value:
        return "no_value"
    return "learned"


def find_runs(root):
    runs = []
    for summary_path in sorted(Path(root).rglob("summary.json")):
        run_dir = summary_path.parent
        summary = json.loads(summary_path.read_text())
        if summary.get("status") != "completed" or not (run_dir / "config.yaml").is_file():
            continue
        cfg = OmegaConf.load(run_dir / "config.yaml")
        if OmegaConf.select(cfg, "algo._target_", default="").rsplit(".", 1)[-1] != "LifetimeReward":
            continue
        runs.append({"dir": run_dir, "cfg": cfg, "summary": summary, "env": cfg.task.env, "arm": arm_of(cfg),
                     "seed": cfg.seed, "iterations": cfg.iterations, "scale": cfg.get("scale", "quick")})
    return runs


# What is kept of a run dir: what the doc reads, and metrics.jsonl (small; the run's training record).
# Not the checkpoint: record() loads it only when lifetimes_test.pt is missing or is for another --lifetimes.
KEPT_FILES = {"summary.json", "config.yaml", "metrics.jsonl", "lifetimes_test.pt"}


def kept_drop(root, bench):
    """keep_runs' drop for --root: every file but the KEPT_FILES and the bench lines (when under the
    root), and the W&B and Hydra dirs (Hydra's config.yaml is not the resolved one the doc reads)."""
    root, bench = Path(root).resolve(), Path(bench).resolve()
    bench_parts = bench.relative_to(root).parts if bench.is_relative_to(root) else None

    def drop(parts):
        if "wandb" in parts or ".hydra" in parts:
            return True
        if parts == bench_parts or root.joinpath(*parts).is_dir():
            return False
        return parts[-1] not in KEPT_FILES
    return drop


def record(run, lifetimes, chunk):
    """The run's test lifetimes with everything recorded (cached beside the run)."""
    cache = run["dir"] / "lifetimes_test.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        if saved["lifetimes"] == lifetimes:
            return saved["record"]
    cfg = run["cfg"]
    torch.set_num_threads(1)
    task, model, _, algo = build(cfg)
    if cfg.algo.reward == "learned":
        model.load_state_dict(checkpoint.load(run["dir"] / "checkpoint.pt")["model"])
    with torch.no_grad():
        result = algo.lifetimes("test", lifetimes, cfg.eval_seed, chunk, record=True)
    result = {k: v.cpu() for k, v in result.items()}
    torch.save({"lifetimes": lifetimes, "record": result}, cache)
    return result


# ---- statistics ---------------------------------------------------------------------------------

def unit_values(group, fn):
    """The values a CI is over: one per seed (learned arms: fn averaged over the lifetimes of each
    seed), or one per lifetime (a baseline: a single run, nothing meta-trained)."""
    if group["arm"] in BASELINES:
        return [v for v in fn(group["records"][0]).tolist()]
    return [float(torch.nanmean(fn(r))) for r in group["records"]]


def ci_text(values, digits=3):
    m, h, _ = mean_ci(values)
    return fmt_ci(m, h, digits)


def combine(verdicts):
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if any(v == "contradicted" for v in verdicts):
        return "contradicted"
    return "not resolved"


def lifetime_return(r):
    return r["return"]


def first_found(r):
    """Episode index of the first success (goal reached) per lifetime; E when never."""
    hit = r["outcome"] == 0
    e = hit.shape[1]
    idx = torch.where(hit, torch.arange(e), torch.full_like(r["outcome"], e))
    return idx.min(1).values.to(torch.float32)


def success_after_found(r):
    found = first_found(r)
    e = r["outcome"].shape[1]
    after = torch.arange(e)[None] > found[:, None]
    hits = ((r["outcome"] == 0) & after).sum(1).to(torch.float32)
    return torch.where(after.sum(1) > 0, hits / after.sum(1).clamp_min(1), torch.full_like(hits, float("nan")))


def cells_drop(r):
    """Distinct cells entered per episode before the first success minus after it (per lifetime)."""
    found = first_found(r)
    e = r["outcome"].shape[1]
    ep = torch.arange(e)[None]
    before, after = ep < found[:, None], ep > found[:, None]
    c = r["cells_entered"]
    mb = (c * before).sum(1) / before.sum(1).clamp_min(1)
    ma = (c * after).sum(1) / after.sum(1).clamp_min(1)
    ok = (before.sum(1) > 0) & (after.sum(1) > 0)
    return torch.where(ok, mb - ma, torch.full_like(mb, float("nan")))


def outcome_rate(k):
    return lambda r: (r["outcome"] == k).to(torch.float32).mean(1)


def box_rate(r):
    return ((r["outcome"] >= 0) & (r["outcome"] < 3)).to(torch.float32).mean(1)


def pooled_event_reward(r, k, episodes=None):
    s, c = r["event_reward"][..., k], r["event_count"][..., k]
    if episodes is not None:
        s, c = s[:, episodes], c[:, episodes]
    return s.sum() / c.sum().clamp_min(1) if c.sum() > 0 else torch.tensor(float("nan"))


def swap_change(r, swap_every):
    """sign(new value) x (r_eta after - before) for A and C over the swap_every/5 episodes around each swap, pooled."""
    e = r["outcome"].shape[1]
    w = max(1, swap_every // 5)
    changes = []
    for s in range(swap_every, e, swap_every):
        sign_after = 1.0 - 2.0 * ((s // swap_every) % 2)
        for k, base in ((0, r["values"][:, 0]), (2, r["values"][:, 2])):
            new = base * sign_after  # each lifetime's value of the object after this swap
            num_b, cnt_b = r["event_reward"][:, s - w:s, k].sum(1), r["event_count"][:, s - w:s, k].sum(1)
            num_a, cnt_a = r["event_reward"][:, s:s + w, k].sum(1), r["event_count"][:, s:s + w, k].sum(1)
            ok = (cnt_b > 0) & (cnt_a > 0)
            delta = num_a / cnt_a.clamp_min(1) - num_b / cnt_b.clamp_min(1)
            changes.append(torch.where(ok, torch.sign(new) * delta, torch.full_like(delta, float("nan"))))
    return torch.nanmean(torch.stack(changes, 1), 1)


# ---- figures ---------------------------------------------------------------------------------------

def binned(x, width):
    """Average (n, E) over consecutive windows of `width` episodes -> (n, E // width)."""
    n, e = x.shape
    k = e // width
    return x[:, :k * width].reshape(n, k, width).mean(2)


def curve(group, key, width):
    """Per-bin mean and CI: over seeds (learned arms) or lifetimes (baselines)."""
    if group["arm"] in BASELINES:
        units = binned(group["records"][0][key], width)
    else:
        units = torch.stack([binned(r[key], width).mean(0) for r in group["records"]])
    stats = [mean_ci(units[:, j].tolist()) for j in range(units.shape[1])]
    mean = torch.tensor([m for m, _, _ in stats])
    half = torch.tensor([h if math.isfinite(h) else 0.0 for _, h, _ in stats])
    return mean, half


def plot_returns(groups, env, arms, path, title):
    fig, ax = plt.subplots(figsize=(7, 3.6))
    e = next(iter(groups.values()))["records"][0]["episode_return"].shape[1]
    width = max(1, e // 40)
    for arm in arms:
        if arm not in groups:
            continue
        mean, half = curve(groups[arm], "episode_return", width)
        x = (torch.arange(len(mean)) + 0.5) * width
        ax.plot(x, mean, color=COLORS[arm], label=f"{LABELS[arm]} (n={len(groups[arm]['records']) if arm not in BASELINES else 'lifetimes'})")
        ax.fill_between(x, mean - half, mean + half, color=COLORS[arm], alpha=0.2)
    ax.set_xlabel("episode of the lifetime")
    ax.set_ylabel(f"extrinsic return per episode\n(mean over {width}-episode windows)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def event_curves(records, k, width, select=None):
    """r_eta at collecting object k per episode window, pooled over lifetimes (and seeds)."""
    s = torch.stack([binned(r["event_reward"][..., k] if select is None else r["event_reward"][select(r)][..., k], width).sum(0) for r in records]).sum(0)
    c = torch.stack([binned(r["event_count"][..., k] if select is None else r["event_count"][select(r)][..., k], width).sum(0) for r in records]).sum(0)
    return torch.where(c > 0, s / c.clamp_min(1e-9), torch.full_like(s, float("nan")))


def plot_object_rewards(task, records, path, title, swap_every=0):
    names = list("ABC") + (["key"] if task == "key_box" else [])
    e = records[0]["episode_return"].shape[1]
    width = max(1, e // 50)
    panels = [("all lifetimes", None)] if not swap_every else [
        ("lifetimes with A = +1 first", lambda r: r["values"][:, 0] > 0), ("lifetimes with A = -1 first", lambda r: r["values"][:, 0] < 0)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 3.4), squeeze=False)
    for ax, (name, select) in zip(axes[0], panels):
        for k, obj in enumerate(names):
            y = event_curves(records, k, width, select)
            x = (torch.arange(len(y)) + 0.5) * width
            ax.plot(x, y, marker=".", ms=3, label=f"collecting {obj}", color=f"C{k}")
        if swap_every:
            for s in range(swap_every, e, swap_every):
                ax.axvline(s, color="k", ls=":", lw=1)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("episode of the lifetime")
        ax.set_ylabel("learned intrinsic reward r_eta")
        ax.set_title(f"{title}: {name}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_value_scatter(records, path):
    """Per lifetime: A's extrinsic value against the learned reward at collecting A (second half of the lifetime)."""
    xs, ys = [], []
    for r in records:
        e = r["event_count"].shape[1]
        s, c = r["event_reward"][:, e // 2:, 0].sum(1), r["event_count"][:, e // 2:, 0].sum(1)
        ok = c > 0
        xs += r["values"][ok, 0].tolist()
        ys += (s[ok] / c[ok]).tolist()
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    ax.scatter(xs, ys, s=6, alpha=0.5)
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("A's extrinsic reward in the lifetime")
    ax.set_ylabel("r_eta at collecting A\n(second half of the lifetime)")
    ax.set_title("Random ABC: the reward for A follows A's value", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_empty_rooms(task, records, path):
    """Left: r_eta at the goal and on other steps, by episode relative to the first success.
    Right: r_eta per cell in three phases of one lifetime (where the agent entered it)."""
    span = range(-20, 41)
    goal, other = {d: [0.0, 0.0] for d in span}, {d: [0.0, 0.0] for d in span}
    for r in records:
        found = first_found(r).long()
        e = r["outcome"].shape[1]
        for i in range(len(found)):
            if found[i] >= e:
                continue
            for d in span:
                ep = found[i].item() + d
                if 0 <= ep < e:
                    goal[d][0] += r["event_reward"][i, ep, 0].item()
                    goal[d][1] += r["event_count"][i, ep, 0].item()
                    other[d][0] += r["step_reward"][i, ep].item()
                    other[d][1] += r["step_count"][i, ep].item()
    fig = plt.figure(figsize=(12, 3.6))
    ax = fig.add_subplot(1, 4, 1)
    ds = list(span)
    ax.plot(ds, [goal[d][0] / goal[d][1] if goal[d][1] else float("nan") for d in ds], ".-", ms=3, label="reaching the goal")
    ax.plot(ds, [other[d][0] / other[d][1] if other[d][1] else float("nan") for d in ds], ".-", ms=3, label="any other step")
    ax.axvline(0, color="k", ls=":", lw=1)
    ax.set_xlabel("episodes since the goal was first found")
    ax.set_ylabel("learned intrinsic reward r_eta")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    # One lifetime (the first test lifetime of the first seed) as maps: mean r_eta on entering each cell.
    r = records[0]
    rows = len(task.rows)
    cols = len(task.rows[0])
    bins = r["cell_reward"].shape[1]
    found_bin = min(bins - 1, int(first_found(r)[0].item() * bins // r["outcome"].shape[1]))
    phases = [(0, "first tenth of the lifetime"), (found_bin, "tenth with the first success"), (bins - 1, "last tenth")]
    maps = []
    for b, _ in phases:
        grid = torch.full((rows, cols), float("nan"))
        s, c = r["cell_reward"][0, b], r["cell_count"][0, b]
        for i, (y, x) in enumerate(task.cells_rc):
            if c[i] > 0:
                grid[y, x] = s[i] / c[i]
        maps.append(grid)
    vmax = max(float(torch.nan_to_num(m, nan=0.0).abs().max()) for m in maps) or 1.0
    goal_y, goal_x = task.cells_rc[int(r["cells"][0, 0])]
    start_y, start_x = task.cells_rc[task.start]
    for j, ((b, name), grid) in enumerate(zip(phases, maps)):
        ax = fig.add_subplot(1, 4, 2 + j)
        im = ax.imshow(grid, cmap="coolwarm", vmin=-vmax, vmax=vmax)
        for y, row in enumerate(task.rows):
            for x, ch in enumerate(row):
                if ch == "#":
                    ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, color="0.3"))
        ax.text(goal_x, goal_y, "G", ha="center", va="center", fontsize=9, weight="bold")
        ax.text(start_x, start_y, "S", ha="center", va="center", fontsize=9)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes[1:], shrink=0.8, label="r_eta on entering the cell")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ---- the doc -----------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT / "outputs" / "lifetime"))
    parser.add_argument("--lifetimes", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--bench", default=None, help="JSON lines of scripts/bench_lifetimes.py (default: <root>/bench.jsonl)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "lifetime_rewards.md"))
    parser.add_argument("--kept", default=None, help="the run data kept beside the doc (default: its figure dir/runs.tar.xz)")
    args = parser.parse_args()
    out = Path(args.out)
    figdir = out.parent / "lifetime_rewards"
    kept = Path(args.kept) if args.kept else figdir / "runs.tar.xz"
    bench = Path(args.bench) if args.bench else Path(args.root) / "bench.jsonl"
    restore_runs(kept, args.root, script="lifetime_report")
    runs = find_runs(args.root)
    if not runs:  # an empty doc would replace the published one
        print(f"lifetime_report: no completed run under {args.root} and none restored from {kept} (unpacked only into a "
              f"missing root), so {out} is left as it is; run them first: `ROOT={args.root} bash scripts/lifetime_runs.sh`",
              file=sys.stderr)
        raise SystemExit(2)
    figdir.mkdir(parents=True, exist_ok=True)
    full_runs = [r for r in runs if r["scale"] == "full"]  # timed only: the figures are the quick scale's
    runs = [r for r in runs if r["scale"] != "full"]
    groups = {}
    for run in runs:
        g = groups.setdefault(run["env"], {}).setdefault(run["arm"], {"arm": run["arm"], "runs": [], "records": []})
        if run["arm"] in BASELINES and g["runs"]:
            continue  # a baseline's seeds are identical: one run is its figure
        g["runs"].append(run)
        print(f"evaluating {run['dir']} ({run['env']}, {run['arm']}, seed {run['seed']})", flush=True)
        g["records"].append(record(run, args.lifetimes, args.chunk))

    blocks = {}
    table, claims, ablation_rows, timing_rows = [], [], [], []
    figures = []
    for env in ENVS:
        if env not in groups or "learned" not in groups[env]:
            continue
        g = groups[env]
        learned = g["learned"]
        e = learned["records"][0]["episode_return"].shape[1]
        path = figdir / f"{env}_returns.png"
        plot_returns(g, env, ("learned", *BASELINES), path, f"{TITLES[env]}: return per episode across the lifetime")
        figures.append(f"### {TITLES[env]}\n\n![{TITLES[env]} returns](lifetime_rewards/{path.name})\n")
        row = {"environment": TITLES[env], "episodes": e}
        for arm in ("learned", *BASELINES):
            if arm in g:
                row[LABELS[arm]] = ci_text(unit_values(g[arm], lifetime_return))
        row["learned, per seed"] = ", ".join(f"{v:.3g}" for v in unit_values(learned, lifetime_return))
        row["seeds (learned)"] = len(learned["records"])
        row["meta-iterations"] = learned["runs"][0]["iterations"]
        table.append(row)
        for base in ("extrinsic_ep", "extrinsic_life"):
            if base in g:
                v, d, h = compare(unit_values(learned, lifetime_return), unit_values(g[base], lifetime_return), "greater")
                claims.append((f"{TITLES[env]}: the learned reward beats {LABELS[base]}", v,
                               f"lifetime return {ci_text(unit_values(learned, lifetime_return))} vs "
                               f"{ci_text(unit_values(g[base], lifetime_return))}; difference {fmt_ci(d, h)}"))
        for arm in ("count", "oracle"):
            if arm in g:
                v, d, h = compare(unit_values(learned, lifetime_return), unit_values(g[arm], lifetime_return), "greater")
                claims.append((f"{TITLES[env]}: the learned reward beats the {LABELS[arm]} reward (not a claim of the paper)", v,
                               f"difference {fmt_ci(d, h)}"))
        task = build(learned["runs"][0]["cfg"])[0]
        if env == "empty_rooms" and "extrinsic_ep" in g:
            base = g["extrinsic_ep"]
            v1, d1, h1 = compare(unit_values(learned, first_found), unit_values(base, first_found), "less")
            v2, d2, h2 = compare(unit_values(learned, success_after_found), unit_values(base, success_after_found), "greater")
            m3, h3, _ = mean_ci(unit_values(learned, cells_drop))
            v3 = verdict(m3, h3, "greater")
            claims.append(("Empty Rooms: the learned reward explores until the goal is found, then exploits", combine([v1, v2]),
                           f"episodes until the first success {ci_text(unit_values(learned, first_found))} vs Extrinsic-EP "
                           f"{ci_text(unit_values(base, first_found))} ({v1}); success rate after it "
                           f"{ci_text(unit_values(learned, success_after_found))} vs {ci_text(unit_values(base, success_after_found))} ({v2}); "
                           f"distinct cells entered per episode fall after the first success by {fmt_ci(m3, h3)} ({v3})"))
            path = figdir / "empty_rooms_intrinsic.png"
            plot_empty_rooms(task, learned["records"], path)
            figures.append(f"![Empty Rooms intrinsic reward](lifetime_rewards/{path.name})\n")
        if env == "random_abc" and "extrinsic_ep" in g:
            per_seed_b = [float(pooled_event_reward(r, 1)) for r in learned["records"]]
            m1, h1, _ = mean_ci(per_seed_b)
            v1 = verdict(m1, h1, "less")
            v2, d2, h2 = compare(unit_values(learned, outcome_rate(1)), unit_values(g["extrinsic_ep"], outcome_rate(1)), "less")
            claims.append(("Random ABC: the learned reward learns to avoid B", combine([v1, v2]),
                           f"r_eta at collecting B {fmt_ci(m1, h1)} ({v1}); share of episodes ending at B "
                           f"{ci_text(unit_values(learned, outcome_rate(1)))} vs Extrinsic-EP "
                           f"{ci_text(unit_values(g['extrinsic_ep'], outcome_rate(1)))} ({v2})"))
            path = figdir / "random_abc_intrinsic.png"
            plot_object_rewards(env, learned["records"], path, TITLES[env])
            figures.append(f"![Random ABC intrinsic reward per object](lifetime_rewards/{path.name})\n")
            path = figdir / "random_abc_value_of_a.png"
            plot_value_scatter(learned["records"], path)
            figures.append(f"![Random ABC reward for A against A's value](lifetime_rewards/{path.name})\n")
        if env == "key_box":
            vs, text = [], []
            for base in ("extrinsic_ep", "extrinsic_life"):
                if base in g:
                    v, d, h = compare(unit_values(learned, box_rate), unit_values(g[base], box_rate), "greater")
                    vs.append(v)
                    text.append(f"{LABELS[base]} {ci_text(unit_values(g[base], box_rate))} ({v})")
            claims.append(("Key-Box: the extrinsic baselines fail to open boxes (the learned reward opens more)", combine(vs),
                           f"share of episodes that open a box: learned {ci_text(unit_values(learned, box_rate))}; " + "; ".join(text)))
            path = figdir / "key_box_intrinsic.png"
            plot_object_rewards(env, learned["records"], path, TITLES[env])
            figures.append(f"![Key-Box intrinsic reward per object](lifetime_rewards/{path.name})\n")
        if env == "nonstationary_abc":
            swap = learned["runs"][0]["cfg"].task.swap_every
            per_seed = [float(torch.nanmean(swap_change(r, swap))) for r in learned["records"]]
            m, h, _ = mean_ci(per_seed)
            claims.append(("Non-stationary ABC: the learned reward changes around the swap", verdict(m, h, "greater"),
                           f"change of r_eta for A and C from the {max(1, swap // 5)} episodes before each swap to the "
                           f"{max(1, swap // 5)} after, signed by the object's new value: {fmt_ci(m, h)}"))
            path = figdir / "nonstationary_abc_intrinsic.png"
            plot_object_rewards(env, learned["records"], path, TITLES[env], swap_every=swap)
            figures.append(f"![Non-stationary ABC intrinsic reward per object](lifetime_rewards/{path.name})\n")
        for arm, group in g.items():
            times = [r["summary"]["time"] for r in group["runs"]]
            walls = [r["summary"]["wall_time"] for r in group["runs"]]
            timing_rows.append({"environment": TITLES[env], "arm": LABELS[arm], "runs": len(times),
                                "meta-iterations": group["runs"][0]["iterations"] if arm not in BASELINES else 0,
                                "training s per run": f"{sum(times) / len(times):.0f}", "whole run s": f"{sum(walls) / len(walls):.0f}",
                                "threads": group["runs"][0]["summary"].get("threads")})

    for env in ENVS:
        if env not in groups or "learned" not in groups[env]:
            claims += [(name, "not run", "no completed learned runs of this environment (see *What was not run*)") for name in CLAIMS[env]]

    # Ablations (Random ABC unless the runs say otherwise): the full method is the learned arm.
    for env, g in groups.items():
        present = [a for a in ABLATIONS if a in g]
        if not present or "learned" not in g:
            continue
        full = g["learned"]
        path = figdir / f"{env}_ablations.png"
        plot_returns(g, env, ("learned", *present), path, f"{TITLES[env]}: ablations")
        blocks_fig = f"![ablations](lifetime_rewards/{path.name})"
        ablation_rows.append({"arm": LABELS["learned"] + " (full)", "lifetime return": ci_text(unit_values(full, lifetime_return)),
                              "seeds": len(full["records"]), "full minus arm": "", "verdict (full is better)": ""})
        for arm in present:
            v, d, h = compare(unit_values(full, lifetime_return), unit_values(g[arm], lifetime_return), "greater")
            ablation_rows.append({"arm": LABELS[arm], "lifetime return": ci_text(unit_values(g[arm], lifetime_return)),
                                  "seeds": len(g[arm]["records"]), "full minus arm": fmt_ci(d, h), "verdict (full is better)": v})
        blocks["ablation_env"] = TITLES[env]
        blocks["ablation_figure"] = blocks_fig
        break
    else:
        blocks["ablation_env"] = "not run"
        blocks["ablation_figure"] = ""

    columns = ["environment", "episodes", *[LABELS[a] for a in ("learned", *BASELINES)], "learned, per seed", "seeds (learned)", "meta-iterations"]
    blocks["final_table"] = md_table(table, columns)
    blocks["figures"] = "\n".join(figures)
    blocks["claims"] = "\n".join(f"| {name} | **{v}** | {ev} |" for name, v, ev in claims)
    blocks["ablation_table"] = md_table(ablation_rows, ["arm", "lifetime return", "seeds", "full minus arm", "verdict (full is better)"]) if ablation_rows else "No ablation run completed: the command that runs them is in *What was not run*."
    blocks["timing_table"] = md_table(timing_rows, ["environment", "arm", "runs", "meta-iterations", "training s per run", "whole run s", "threads"])
    blocks["speed"] = speed_block(bench) + "\n\n" + quick_target_line(groups)
    blocks["protocol"] = protocol_block(runs, args.lifetimes)
    blocks["full_cost"] = full_cost_block(groups, full_runs)
    blocks["not_run"] = not_run_block(groups)
    blocks["hyperparameters"] = hyperparameter_block(groups)
    blocks["layouts"] = layout_block()
    render(ROOT / "docs" / "src" / "lifetime_rewards.md", out, blocks, script=Path(__file__).name)
    print(f"wrote {out}; its run data kept in {keep_runs(args.root, kept, drop=kept_drop(args.root, bench))}")


def speed_block(path):
    if not path.is_file():
        return "(no benchmark results: run scripts/bench_lifetimes.py --out " + str(path) + ")"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for r in lines:
        if "preset" in r:
            rows.append({"measurement": f"`+experiment={r['preset']}` end to end (scale={r['scale']}, {r['iterations']} meta-iterations)",
                         "batched": f"training {r['train_seconds'] / 60:.1f} min, whole run {r['wall_seconds'] / 60:.1f} min",
                         "per-lifetime loop": "", "ratio": "", "threads": r["threads"], "when": r["date"]})
        else:
            rows.append({"measurement": f"{r['env']}: whole lifetimes stepped per second ({r['lifetimes']} lifetimes, reward frozen)",
                         "batched": f"{r['eval_lifetimes_per_s_batched']:.2f}", "per-lifetime loop": f"{r['eval_lifetimes_per_s_loop']:.2f}",
                         "ratio": f"{r['eval_speedup']:.1f}x", "threads": r["threads"], "when": r["date"]})
            rows.append({"measurement": f"{r['env']}: meta-updates per second ({r['lifetimes']} lifetimes x "
                                        f"{r['train_lifetime_steps_per_meta_update'] // r['lifetimes']} steps)",
                         "batched": f"{r['train_meta_updates_per_s_batched']:.2f}", "per-lifetime loop": f"{r['train_meta_updates_per_s_loop']:.2f}",
                         "ratio": f"{r['train_speedup']:.1f}x", "threads": r["threads"], "when": r["date"]})
    return md_table(rows, ["measurement", "batched", "per-lifetime loop", "ratio", "threads", "when"])


def quick_target_line(groups):
    """The issue's target: the quick Random ABC preset meta-trains in <= 15 minutes on the 2-core machine."""
    runs = groups.get("random_abc", {}).get("learned", {}).get("runs", [])
    if not runs:
        return "Quick Random ABC preset: no completed run, so the 15-minute target is not measured."
    walls = [r["summary"]["wall_time"] for r in runs]
    ok = max(walls) <= 15 * 60
    return (f"The quick Random ABC preset (`+experiment=lifetime_random_abc`, {runs[0]['iterations']} meta-iterations, "
            f"test on 100 lifetimes included) took {sum(walls) / len(walls) / 60:.1f} min per run on average and "
            f"{max(walls) / 60:.1f} min at most over its {len(walls)} published runs (one thread each, beside other jobs "
            f"on the shared 2 cores): the target of at most 15 minutes is **{'met' if ok else 'missed'}**.")


def hyperparameter_block(groups):
    """The learned runs' settings, from their resolved configs."""
    cfgs = {env: g["learned"]["runs"][0]["cfg"] for env, g in groups.items() if "learned" in g}
    if not cfgs:
        return "(no learned runs found)"
    first = cfgs.get("random_abc", next(iter(cfgs.values())))
    rows = []
    for key, what in [("algo.unroll", "N: inner updates the truncated meta-gradient goes through (one meta-iteration)"),
                      ("algo.segment", "steps of every lifetime per inner update"),
                      ("algo.inner_lr", "alpha: the agent's SGD step (REINFORCE loss summed over the segment)"),
                      ("algo.inner_gamma", "gammabar: the agent's discount (episodic intrinsic return)"),
                      ("algo.n_step", "n of the lifetime value's n-step TD targets"),
                      ("algo.policy_hidden", "agent's hidden layers ([]: tabular softmax)"),
                      ("model.hidden", "LSTM units of the reward"),
                      ("meta_batch_size", "lifetimes per meta-batch"),
                      ("model.value_hidden", "LSTM units of the value (null: = model.hidden)"),
                      ("algo.max_grad_norm", "clip of the reward's meta-gradient"),
                      ("algo.count_bonus", "beta of the count-bonus baseline")]:
        rows.append({"setting": f"`{key}`", "value": OmegaConf.select(first, key), "meaning": what})
    table = md_table(rows, ["setting", "value", "meaning"])
    from metarun.tasks.gridworld import DEFAULTS

    per_env = []
    for e, c in cfgs.items():
        per_env.append({"environment": TITLES[e], "episodes per lifetime": c.task.lifetime_episodes or DEFAULTS[e][1],
                        "horizon": c.task.horizon or DEFAULTS[e][2], "`algo.gamma`": c.algo.gamma,
                        "`model.reward_bound`": c.model.reward_bound, "`optim.lr`": c.optim.lr,
                        "swap every": c.task.swap_every if e == "nonstationary_abc" else ""})
    envs = md_table(per_env, ["environment", "episodes per lifetime", "horizon", "`algo.gamma`", "`model.reward_bound`", "`optim.lr`", "swap every"])
    return table + "\n\nPer environment (the presets differ only here):\n\n" + envs


def layout_block():
    from metarun.tasks.gridworld import DEFAULTS, LAYOUTS

    parts = []
    for env in ENVS:
        layout, episodes, horizon = DEFAULTS[env]
        parts.append(f"**{TITLES[env]}** ({episodes} episodes per lifetime, horizon {horizon} steps)\n\n```\n" + "\n".join(LAYOUTS[layout]) + "\n```")
    return "\n\n".join(parts)


def full_cost_block(groups, full_runs=()):
    """What the presets' full scale costs: measured where a `scale=full` run completed, else projected
    from the quick runs' measured seconds per meta-iteration."""
    measured = [f"{TITLES[r['env']]} ({LABELS.get(r['arm'], r['arm'])}, seed {r['seed']}): {r['iterations']} meta-iterations trained in "
                f"{r['summary']['time'] / 60:.1f} min ({r['summary']['time'] / max(1, r['iterations']):.3f} s per meta-iteration; "
                f"threads {r['summary'].get('threads', '?')}, `{os.path.relpath(r['dir'], ROOT)}`)" for r in full_runs]
    lines, total = [], 0.0
    for env, g in groups.items():
        if "learned" not in g:
            continue
        runs = g["learned"]["runs"]
        per_it = sum(r["summary"]["time"] / max(1, r["iterations"]) for r in runs) / len(runs)
        preset = OmegaConf.load(ROOT / "conf" / "experiment" / f"lifetime_{env}.yaml")
        full = preset.scales.full.iterations
        seeds = len(str(preset.scales.full.seeds).split(","))
        arms = 1 + (len(ABLATIONS) if env == "random_abc" else 0)
        cost = per_it * full * seeds * arms
        total += cost
        lines.append(f"{TITLES[env]} {per_it:.3f} s per meta-iteration x {full} x {seeds} seeds"
                     + (f" x {arms} arms (with the ablations)" if arms > 1 else "") + f" = {cost / 3600:.2f} core-hours")
    text = ""
    if measured:
        text = ("Measured at `scale=full` (training time of each completed run; its figures are not in the tables above, "
                "which are the quick scale's): " + "; ".join(measured) + ".\n\n")
    if not lines:
        return text
    return text + ("The presets' whole `scale=full` protocol, projected from the measured seconds per meta-iteration of the quick runs "
                   "above (one thread, training only): " + "; ".join(lines) + f"; in all about {total / 3600:.1f} core-hours plus evaluations.")


def not_run_block(groups):
    """What the published protocol has that the runs found do not, with the command that runs the rest."""
    lines = []
    for env in ENVS:
        preset = OmegaConf.load(ROOT / "conf" / "experiment" / f"lifetime_{env}.yaml")
        want = [int(x) for x in str(preset.scales.quick.seeds).split(",")]
        g = groups.get(env, {})
        have = sorted(r["seed"] for r in g.get("learned", {}).get("runs", []))
        seeds = [x for x in want if x not in have]
        bases = [b for b in BASELINES if b not in g]
        if not seeds and not bases:
            continue
        what = []
        if seeds:
            what.append(f"learned reward seeds {seeds} of {want}")
        if bases:
            what.append("baselines " + ", ".join(LABELS[b] for b in bases))
        seed_var = f'SEEDS="{" ".join(map(str, seeds))}" ' if seeds and seeds != want else ""
        base_var = "" if bases else "BASELINES=0 "
        lines.append(f"- {TITLES[env]}: {'; '.join(what)}: `ENVS={env} {seed_var}{base_var}ABLATIONS=0 "
                     f"bash scripts/lifetime_runs.sh`")
    abl = OmegaConf.load(ROOT / "conf" / "experiment" / "lifetime_ablations.yaml")
    want = [int(x) for x in str(abl.scales.quick.seeds).split(",")]
    g = groups.get(abl.task.env, {})
    missing = {a: [x for x in want if x not in sorted(r["seed"] for r in g.get(a, {}).get("runs", []))] for a in ABLATIONS}
    missing = {a: m for a, m in missing.items() if m}
    if missing:
        what = "; ".join(f"{LABELS[a]} seeds {m}" for a, m in missing.items())
        lines.append(f"- ablations ({TITLES[abl.task.env]}): {what}: `ENVS=\"\" ARMS=\"{' '.join(missing)}\" "
                     f"bash scripts/lifetime_runs.sh`")
    if not lines:
        return "Every run of the quick protocol completed."
    return ("These runs of the quick protocol (5 seeds per learned arm, `scale=quick`) did not run for lack of "
            "machine time; their sections below are absent or say *not run*. The commands run exactly them "
            "(a completed run is skipped), then `python scripts/lifetime_report.py` regenerates this file:\n\n"
            + "\n".join(lines))


def protocol_block(runs, lifetimes):
    counts = {}
    for r in runs:
        key = (r["env"], r["arm"], r["iterations"])
        counts.setdefault(key, []).append(r)
    lines = [f"- test lifetimes per run: {lifetimes} (test split, eval_seed; the same lifetimes for every run)"]
    total = 0.0
    for (env, arm, iters), rs in sorted(counts.items()):
        wall = sum(r["summary"]["wall_time"] for r in rs)
        total += wall
        lines.append(f"- {TITLES.get(env, env)}, {LABELS.get(arm, arm)}: {len(rs)} run(s) of {iters} meta-iterations, "
                     f"seeds {sorted(r['seed'] for r in rs)}, {wall / 60:.1f} core-minutes")
    lines.append(f"- total: {total / 3600:.2f} core-hours of runs (each run on one thread), plus this report's evaluations")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The training run: build everything from the config, meta-train, evaluate, log, checkpoint.

Read top to bottom: `build` instantiates task, model, optimizer and algorithm; `train` runs the
meta-iterations with periodic evaluation and checkpoints; the final meta-test figures go to
summary.json.
"""
import contextlib
import json
import math
import signal
import threading
import time
from functools import partial
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm import tqdm

from metarun import checkpoint, threads
from metarun.algos import SelfEvaluating
from metarun.checkpoint import atomic_write
from metarun.config import ConfigError, DataError, resolve_device, validate
from metarun.evaluate import evaluate, summarize
from metarun.loggers import Loggers
from metarun.lake import lake_config, lake_errors, lake_summary
from metarun.tasks import EnvTaskFamily, KnowsOptimum, MultiAgentTaskFamily, ReadsImages, RLTaskFamily


class NonFiniteLoss(RuntimeError):
    pass


class Stopped(KeyboardInterrupt):
    """SIGTERM (a Slurm time limit or preemption, `kill`) stopped the run at the end of an iteration,
    after writing a checkpoint there: resume=true loses none of its work. A KeyboardInterrupt, so
    that whatever stops on Ctrl-C stops on it too."""


@contextlib.contextmanager
def sigterm_requests():
    """While training, SIGTERM asks the loop to stop after the iteration it is in, rather than kill it
    mid-step and lose the work since the last checkpoint: the yielded list gets the signal. Only the
    main thread can take signals; in another, SIGTERM keeps its default."""
    requested = []
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: requested.append(signum)) if main else None
    try:
        yield requested
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def build(cfg, task=None):
    """Task family, model, outer optimizer and algorithm for `cfg`, seeded.

    `task`: a stand-in for the task family (e.g. `ImageInputs`, for prediction without the data set)."""
    if isinstance(cfg.get("threads"), int):
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.get("device", "cpu"))
    torch.manual_seed(cfg.seed)
    task = _instantiate(cfg.task, device=device) if task is None else task
    # Sizes only a multi-agent task knows (agents, state) fill the model config keys that ask for them.
    sizes = {k: v for k, v in task.model_sizes().items() if k in cfg.model} if isinstance(task, MultiAgentTaskFamily) else {}
    # The model is initialised on the CPU from the seeded global generator, then moved: a seed
    # gives the same initial weights on every device.
    model = _instantiate(cfg.model, input_shape=task.input_shape, output_dim=task.output_dim, **sizes).to(device)
    optimizer = _instantiate(cfg.optim)(model.parameters())
    algo = _instantiate(cfg.algo, model=model, optimizer=optimizer, task=task, _recursive_=False)
    threads.apply(cfg, task, model, algo)  # threads=auto looks at the workload (metarun/threads.py)
    if isinstance(task, MultiAgentTaskFamily) and not isinstance(algo, SelfEvaluating):
        raise ConfigError("algo", cfg.algo._target_.rsplit(".", 1)[-1], "qmix or kaleidoscope_qmix for particle_world; matd3 or kaleidoscope_matd3 for mamujoco")
    if isinstance(task, (RLTaskFamily, EnvTaskFamily)) and not isinstance(algo, SelfEvaluating):
        raise ConfigError("algo", cfg.algo._target_.rsplit(".", 1)[-1], "maml_rl for RL tasks (navigation2d, half_cheetah_vel, "
                          "half_cheetah_dir); ppo or lirpg for mujoco_delayed; lifetime_reward for gridworld")
    return task, model, optimizer, algo


def _instantiate(node, **kwargs):
    """Hydra's instantiate, but a user mistake raised by a constructor surfaces as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, (ConfigError, DataError)):
            raise e.__cause__ from None
        raise


def fingerprint(cfg):
    """The settings a resumed run must share with its checkpoint."""
    keep = ("algo", "task", "model", "optim", "seed", "meta_batch_size")
    plain = OmegaConf.to_container(cfg, resolve=True)
    return {k: json.dumps(plain[k], sort_keys=True) for k in keep}


def selection_metric(metrics):
    """The validation figure best.pt is chosen by, and its score (higher is better)."""
    for key in ("eval/accuracy", "eval/return"):
        if key in metrics:
            return key, metrics[key], metrics[key]
    return "eval/loss", metrics["eval/loss"], -metrics["eval/loss"]


def chosen_steps(val):
    """The number of inner steps with the best validation figure (`eval/<metric>_step<k>`; the fewest on ties):
    the highest accuracy (classification) or return (RL), else the lowest loss."""
    key, sign = next(((m, 1) for m in ("accuracy", "return") if f"eval/{m}_step0" in val), ("loss", -1))
    steps = []
    while f"eval/{key}_step{len(steps)}" in val:
        steps.append(len(steps))
    finite = [k for k in steps if math.isfinite(val[f"eval/{key}_step{k}"])] or steps
    return max(finite, key=lambda k: (sign * val[f"eval/{key}_step{k}"], -k))


def at_steps(figures, prefix, k):
    """`figures` with `<prefix>/<metric>` (and `_ci95`) set to the figure after `k` inner steps."""
    out = dict(figures)
    for name in [key[: -len("_step0")] for key in figures if key.endswith("_step0")]:
        out[name], out[f"{name}_ci95"] = figures[f"{name}_step{k}"], figures[f"{name}_step{k}_ci95"]
    return out


def write_summary(run_dir, summary):
    summary["updated_at"] = round(time.time(), 3)  # metarun-report flags a `running` run that stopped writing as stale
    atomic_write(Path(run_dir) / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))


# Progress-bar names for algo choices whose upper-cased name reads wrong.
ALGO_NAMES = {"reptile": "Reptile", "maml_rl": "MAML-RL"}


def algo_name(cfg):
    """The algorithm as the user chose it (algo=anil -> ANIL, though the class is MAML)."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("algo") if HydraConfig.initialized() else None
    return ALGO_NAMES.get(choice, choice.upper()) if choice else cfg.algo._target_.split(".")[-1]


def write_config(run_dir, cfg):
    """The resolved config in <run dir>/config.yaml: all that loading the run needs, however it was started."""
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    atomic_write(Path(run_dir) / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(plain, resolve=True).encode()))


def provenance(device):
    """What produced a run's figures: versions, device and, from a git checkout, the commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("metarun")
    except PackageNotFoundError:
        own = None
    commit = None
    try:  # a reviewer can check out exactly the code that made the figures; "+dirty" if it had edits
        import subprocess

        here = Path(__file__).resolve().parent
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            commit = head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {"metarun": own, "git_commit": commit, "torch": torch.__version__, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def rng_state(generator):
    state = {"task_rng": generator.get_state(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(generator, state):
    generator.set_state(state["task_rng"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def run(cfg, run_dir, group=None, name=None):
    """Meta-train according to `cfg`, writing into `run_dir`. Returns the summary dict."""
    wall_start = time.perf_counter()
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task, model, optimizer, algo = build(cfg)
    # Validation and test tasks: the task family's own episodes, or Lake et al.'s one-shot runs on its
    # validation and test splits (eval_protocol=lake).
    eval_task = task
    if cfg.get("eval_protocol") == "lake":
        with lake_errors():
            eval_task = _instantiate(lake_config(cfg.task), device=resolve_device(cfg.get("device", "cpu")))
    # Tasks are drawn from a CPU generator whatever the device, so a seed gives the same tasks anywhere.
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    ckpt_path, best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
    start, train_time = 0, 0.0
    wall_before = 0.0  # wall-clock of earlier processes of this run, up to the checkpoint this one resumes
    oracle = {}  # cumulative oracle calls, by the keys the algorithm reports
    best = None  # where best.pt came from: {"metric", "value", "score", "iteration"}
    last_val = None  # (iteration, validation figures) of the latest validation
    if cfg.resume:
        state = checkpoint.load(ckpt_path)
        checkpoint.check_matches(ckpt_path, state, model, fingerprint(cfg))
        if "algo" not in state:
            raise DataError(f"checkpoint {ckpt_path} was written by an older metarun (format {state['format']}) without the "
                            "algorithm's state: it can be evaluated (mode=eval, load_learner) but not resumed exactly")
        model.load_state_dict(state["model"])
        algo.load_state_dict(state["algo"])
        set_rng_state(generator, state)
        start, train_time, oracle = state["iteration"], state["time"], dict(state["oracle"])
        # Checkpoints before wall_time was kept carry the training time only: a lower bound.
        wall_before = state.get("wall_time", train_time)
        if best_path.is_file():
            best = checkpoint.load(best_path)["best"]
    write_config(run_dir, cfg)
    if isinstance(task, ReadsImages):  # what prediction needs, so a run dir works without the data set
        atomic_write(run_dir / "preprocess.json", lambda f: f.write(json.dumps(task.preprocess(), indent=2).encode()))

    if cfg.resume:
        print(f"metarun: resuming {run_dir} from iteration {start} of {cfg.iterations}", flush=True)
    else:
        print(f"metarun: writing to {run_dir}", flush=True)
    loggers = Loggers(cfg, run_dir, group, name, start if cfg.resume else None)
    summary = {"status": "running", "iteration": start, "checkpoint_iteration": start if cfg.resume else None,
               "run_dir": str(run_dir), "name": name, "group": group,
               "threads": torch.get_num_threads(), "threads_reason": threads.last["reason"],
               "started_at": round(time.time(), 3), "checkpoint_every": cfg.checkpoint_every,
               "provenance": provenance(next(model.parameters()).device)}
    write_summary(run_dir, summary)
    last_checkpoint = time.perf_counter()

    def per_task(split):
        # An algorithm with its own evaluation (RL: returns from fresh rollouts) provides `evaluate`.
        return (algo.evaluate if isinstance(algo, SelfEvaluating) else partial(evaluate, algo, eval_task))(
            split, cfg.eval_tasks, cfg.eval_steps, cfg.eval_seed, cfg.eval_chunk)

    def evaluation(split, prefix):
        return summarize(per_task(split), prefix)

    def validation(iteration):
        # Keep the parameters with the best validation figure in best.pt (test_checkpoint=best tests them).
        nonlocal best, last_val
        metrics = evaluation("val", "eval")
        last_val = (iteration, metrics)
        key, value, score = selection_metric(metrics)
        if math.isfinite(score) and (best is None or score > best["score"]):
            best = {"metric": key, "value": value, "score": score, "iteration": iteration}
            checkpoint.save(best_path, {"iteration": iteration, "model": model.state_dict(), "algo": algo.state_dict(),
                                        "best": best, "val": metrics, "config": fingerprint(cfg)})
        return metrics

    def save(iteration):
        nonlocal last_checkpoint
        checkpoint.save(ckpt_path, {
            "iteration": iteration, "time": train_time, "wall_time": wall_before + time.perf_counter() - wall_start, "oracle": oracle,
            "model": model.state_dict(), "algo": algo.state_dict(), **rng_state(generator),
            "config": fingerprint(cfg),
        })
        # The summary says where the run stands even after a kill: the checkpointed iteration, and
        # how long a checkpoint interval takes (evaluations included), by which a silent run is stale.
        now = time.perf_counter()
        summary.update(iteration=iteration, checkpoint_iteration=iteration, checkpoint_seconds=round(now - last_checkpoint, 3))
        last_checkpoint = now
        write_summary(run_dir, summary)

    def record(iteration, metrics):
        row = {"iteration": iteration, "time": round(train_time, 4), **metrics}
        row.update({f"oracle/{k}": v for k, v in oracle.items()})
        if isinstance(task, KnowsOptimum):
            row.update({f"train/{k}": v for k, v in task.metrics(model).items()})
        loggers.log(row)

    last_good = start if cfg.resume else None
    done = start  # the last completed iteration
    status = "failed"
    with sigterm_requests() as stop:
        try:
            if start == 0:
                record(0, validation(0))
            bar = tqdm(range(start + 1, cfg.iterations + 1), initial=start, total=cfg.iterations,
                       disable=not cfg.progress, desc=algo_name(cfg), dynamic_ncols=True,
                       mininterval=1.0)
            for it in bar:
                t0 = time.perf_counter()
                batch = task.sample(cfg.meta_batch_size, generator, "train")
                metrics = algo.step(batch)
                train_time += time.perf_counter() - t0
                done = it
                if not all(math.isfinite(v) for v in metrics.values()):
                    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
                    kept = f"the last good checkpoint ({ckpt_path}, iteration {last_good}) is kept" if last_good is not None else "no checkpoint was written yet"
                    raise NonFiniteLoss(f"training stopped at iteration {it}: non-finite {bad}; lower optim.lr or algo.inner_lr; {kept}")
                for k, v in algo.oracle_calls(cfg.meta_batch_size).items():
                    oracle[k] = oracle.get(k, 0) + v
                row = {f"train/{k}": v for k, v in metrics.items()}
                if it % cfg.eval_every == 0 or it == cfg.iterations:
                    row.update(validation(it))
                    record(it, row)
                elif it % cfg.log_every == 0:
                    record(it, row)
                if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
                    save(it)
                    last_good = it
                if stop and it < cfg.iterations:  # SIGTERM: this iteration's checkpoint, then stop
                    if last_good != it:
                        save(it)
                        last_good = it
                    raise Stopped
                # Validation figures as val_<name>, so they do not overwrite the training ones of the same name.
                bar.set_postfix({k.replace("train/", "").replace("eval/", "val_"): f"{v:.4g}" for k, v in row.items()
                                 if k in ("train/loss", "train/accuracy", "train/return", "eval/loss", "eval/accuracy", "eval/return")},
                                refresh=False)
            bar.close()
            tested, tested_file = cfg.iterations, ckpt_path.name
            val = last_val[1] if last_val is not None and last_val[0] == cfg.iterations else None
            if cfg.test_checkpoint == "best" and best is not None:
                state = checkpoint.load(best_path)
                model.load_state_dict(state["model"])
                algo.load_state_dict(state["algo"])
                tested, tested_file, val = best["iteration"], best_path.name, state.get("val")
                print(f"metarun: testing best.pt (iteration {tested}, {best['metric']} {best['value']:.4g})", flush=True)
            # The number of test-time inner steps is chosen on the validation split, at the tested
            # parameters: test/<metric> is the test figure after that many steps (all of 0..eval_steps stay).
            steps = chosen_steps(val if val is not None else evaluation("val", "eval"))
            tested_tasks = per_task("test")
            final = at_steps(summarize(tested_tasks, "test"), "test", steps)
            if cfg.get("eval_protocol") == "lake":
                final.update(lake_summary(tested_tasks, eval_task, cfg, steps, run_dir))
            summary.update(final, status="completed", iteration=cfg.iterations, tested_iteration=tested,
                           tested_checkpoint=tested_file, test_steps=steps, time=train_time,
                           # the whole run's, evaluations included: across resumes, as `time` (the work a kill
                           # threw away after the last checkpoint is not counted; its redo is)
                           wall_time=wall_before + time.perf_counter() - wall_start,
                           threads=torch.get_num_threads(),  # what the times above were measured with
                           **{f"oracle/{k}": v for k, v in oracle.items()})
            status = "completed"
            return summary
        except NonFiniteLoss as e:
            # `failure` says what kind for scripts (the report counts diverged runs as censored); `error` is for people
            summary.update(status="failed", failure="non_finite", error=str(e), iteration=done)
            raise
        except KeyboardInterrupt as e:
            by = "stopped by SIGTERM" if isinstance(e, Stopped) else "interrupted by the user"
            summary.update(status="interrupted", iteration=done,
                           error=f"{by} at iteration {done}; resume=true run_dir={run_dir} continues "
                                 f"from the checkpoint at iteration {last_good if last_good is not None else 0}")
            raise
        except Exception as e:
            summary.update(status="failed", failure="exception", error=f"{type(e).__name__}: {e}", iteration=done)
            raise
        finally:
            write_summary(run_dir, summary)
            loggers.finish(summary if status == "completed" else {"status": summary["status"]})

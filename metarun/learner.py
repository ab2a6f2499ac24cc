"""Using a trained run: meta-test its checkpoint (`metarun mode=eval`) and adapt it to new tasks.

`evaluate_run` is what `metarun mode=eval run_dir=<run>` calls: the run's model is rebuilt from
the composed config (the run's overrides, then the user's), its checkpoint loaded, and the
meta-test split (or, with `split=val`, the validation split: where choices such as the number of
test-time inner steps are made) evaluated exactly as at the end of training.

`load_learner(run_dir)` gives a `Learner` for your own few-shot tasks:

    learner = metarun.load_learner("outputs/runs/2026-11-22/10-00-00")
    learner.adapt(support_paths, support_labels)    # e.g. ["a/1.png", ...], ["cat", "cat", "dog", ...]
    probs = learner.predict(query_paths)            # (n, ways) tensor; column j is learner.classes[j]
    labels = learner.predict_labels(query_paths)    # ["dog", "cat", ...]

Adaptation is the run's own inner loop (`metarun.inner_loop.adapt` on the run's adapted
subset, with its inner lr, L2 and number of steps), and image files go through the preprocessing
of training (decode, resize, invert, scale), which the run recorded in preprocess.json: the
learner needs only the run dir, not the data set it was trained on.

A different number of classes than the checkpoint's head was trained for is allowed when the
head adapts: the output layer is then zero-initialised (Ye & Chao, 2021, "How to train your MAML
to excel in few-shot classification": with a zero head every class starts equal, so any number
of ways can be adapted to) and everything else loaded; the output says so.
"""
import json
import time
from contextlib import nullcontext
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch import nn
from torch.func import vmap

from metarun import checkpoint
from metarun.config import ConfigError, DataError, resolve_device, validate
from metarun.algos import SelfEvaluating
from metarun.evaluate import evaluate, summarize
from metarun.inner_loop import FixedRule, LearnedRule, adapt, start_fast, task_functions
from metarun.lake import lake_config, lake_errors, lake_summary
from metarun.tasks import ReadsImages
from metarun.tasks.images import ImageInputs
from metarun.train import at_steps, build, write_summary

ZERO_INIT = "zero-initialised (Ye & Chao, 2021)"


def read_checkpoint(path):
    """The checkpoint at `path` (weights_only), or a DataError saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no checkpoint at {path}: the run has not written one yet (it does every checkpoint_every "
                        f"iterations and at the end)")
    return checkpoint.load(path)


def restore(model, saved, adapted, source):
    """Load the state dict `saved` into `model`; returns the names zero-initialised.

    Only output-layer tensors whose shape differs (another number of ways) are zero-initialised,
    and only when they adapt: a zero head that never adapts would predict nothing.
    """
    current = model.state_dict()
    if saved.keys() != current.keys():
        diff = sorted(set(saved) ^ set(current))
        raise DataError(f"{source} was written for a different model (differs in: {', '.join(diff[:8])})")
    mismatched = [k for k in saved if saved[k].shape != current[k].shape]
    body = [k for k in mismatched if not k.startswith("head.")]
    if body:
        shapes = "; ".join(f"{k}: saved {tuple(saved[k].shape)}, now {tuple(current[k].shape)}" for k in body[:4])
        raise DataError(f"{source} was written for a different model body ({shapes})")
    frozen = [k for k in mismatched if k not in adapted]
    if frozen:
        raise DataError(f"{source}: the head has {saved[frozen[0]].shape[0]} outputs, {current[frozen[0]].shape[0]} are "
                        f"needed now, and {', '.join(frozen)} do not adapt (algo.adapt), so a new head could not be "
                        "learned; use the trained number of ways")
    model.load_state_dict({**saved, **{k: torch.zeros_like(current[k]) for k in mismatched}})
    return mismatched


def zero_init_note(names, old, new, head_init="learned"):
    start = ZERO_INIT if head_init == "learned" else "built per task from the support set's class prototypes (algo.head_init=prototypes)"
    return f"the checkpoint's head has {old} outputs and the task {new} ways: {', '.join(names)} {start}"


def evaluate_run(cfg, out_dir):
    """Meta-test the checkpoint of the training run `cfg.run_dir` into `out_dir`; returns the summary.

    The "test/*" figures are those of `metarun.train.run`'s final evaluation: `cfg.eval_tasks`
    fixed tasks (seed `cfg.eval_seed`) of the test split, after 0..K inner steps, where K is
    the larger of `cfg.eval_steps` and `cfg.algo.inner_steps`. "test/<metric>" is after the run's
    own `test_steps` (chosen on its validation split) when the evaluation runs the steps the run
    did (same eval_steps and algo.inner_steps), else after K steps; `test_steps` says which.
    With `split=val` the figures are the validation set's (seed `eval_seed + 1`), named "val/*".
    `eval_protocol=lake` evaluates Lake et al.'s one-shot runs of the split instead (metarun.lake):
    "lake/error" and <out_dir>/lake_runs.csv beside the "<split>/*" figures of the same runs.
    """
    start = time.perf_counter()
    validate(cfg)
    if not cfg.get("run_dir"):
        raise ConfigError("run_dir", None, "mode=eval needs run_dir=<a training run dir>")
    source = Path(cfg.run_dir)
    if not source.is_dir():
        raise DataError(f"run_dir={source} does not exist")
    out_dir = Path(out_dir)
    if out_dir.resolve() == source.resolve():
        raise ConfigError("hydra.run.dir", str(out_dir), "a folder other than run_dir: evaluation never writes over "
                          "the training run's files")
    path = source / ("best.pt" if cfg.get("test_checkpoint") == "best" else "checkpoint.pt")
    split = cfg.get("split", "test")
    state = read_checkpoint(path)  # before anything is printed or written: a run without one fails cleanly
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"metarun: evaluating {path} on the {split} split into {out_dir}", flush=True)
    summary = {"status": "running", "mode": "eval", "split": split, "run_dir": str(out_dir), "source_run_dir": str(source),
               "checkpoint": path.name}
    write_summary(out_dir, summary)
    try:
        lake = cfg.get("eval_protocol") == "lake"
        if lake:
            with open_dict(cfg):
                cfg.task = lake_config(cfg.task)
            summary["eval_protocol"] = "lake"
        with lake_errors() if lake else nullcontext():
            task, model, _, algo = build(cfg)
        zeroed = restore(model, state["model"], algo.adapted, f"checkpoint {path}")
        load_algo_state(algo, state, zeroed)
        if zeroed:
            old = state["model"][zeroed[0]].shape[0]
            note = zero_init_note(zeroed, old, task.output_dim, algo.head_init)
            print(f"metarun: {note}", flush=True)
            summary["head"] = note
        summary["zero_init"] = zeroed
        summary["checkpoint_iteration"] = state.get("iteration")
        # `metarun mode=eval ... algo.inner_steps=10` should report the accuracy after 10 steps,
        # even when the run evaluated fewer (eval_steps): report 0..max(eval_steps, inner_steps).
        steps = max(cfg.eval_steps, cfg.algo.get("inner_steps", 0))
        if isinstance(algo, SelfEvaluating):  # an algorithm with its own evaluation (RL)
            per_task = algo.evaluate(split, cfg.eval_tasks, steps, cfg.eval_seed, cfg.eval_chunk)
        else:
            per_task = evaluate(algo, task, split, cfg.eval_tasks, steps, cfg.eval_seed, cfg.eval_chunk)
        reported = reported_steps(cfg, source, steps)
        summary.update(at_steps(summarize(per_task, split), split, reported), test_steps=reported)
        if cfg.get("eval_protocol") == "lake":
            summary.update(lake_summary(per_task, task, cfg, reported, out_dir, split))
        summary["status"] = "completed"
        return summary
    except KeyboardInterrupt:
        summary.update(status="interrupted", error="interrupted by the user")
        raise
    except Exception as e:
        summary.update(status="failed", error=str(e) if isinstance(e, (ConfigError, DataError)) else f"{type(e).__name__}: {e}")
        raise
    finally:
        summary["time"] = time.perf_counter() - start
        write_summary(out_dir, summary)


def reported_steps(cfg, source, steps):
    """The number of inner steps behind "<split>/<metric>": the run's own choice (summary.json's
    `test_steps`, made on its validation split) when this evaluation runs the inner steps the run
    did (the same eval_steps and algo.inner_steps), else `steps`, the last one evaluated."""
    chosen = read_summary(source).get("test_steps")
    try:
        trained = OmegaConf.load(Path(source) / "config.yaml")
    except Exception:  # an older run without config.yaml, or an unreadable one
        return steps
    same = (trained.get("eval_steps") == cfg.eval_steps
            and OmegaConf.select(trained, "algo.inner_steps") == OmegaConf.select(cfg, "algo.inner_steps"))
    return chosen if same and isinstance(chosen, int) and 0 <= chosen <= steps else steps


def load_learner(run_dir, overrides=(), checkpoint=None, device="cpu"):
    """A `Learner` from a training run dir: its config and the checkpoint its figures came from.

    By default the learner reproduces the run's own reported test figures: it loads the checkpoint
    the run meta-tested (`best.pt` under `test_checkpoint=best`, else `checkpoint.pt`; `checkpoint=`
    picks one) and adapts for as many inner steps as the reported figure took (`eval_steps`, or the
    run's `test_steps`), with the run's adapt rule. `overrides` are dotlist strings applied to the
    run's config before anything is built, e.g. ``["algo.inner_lr=0.1"]``. The data set is not
    needed: image runs recorded their preprocessing (preprocess.json), from which `learner.task`
    (an `ImageInputs`) reads image files. A `task.*` override (``["task.root=/data"]``), or a run
    without preprocess.json, rebuilds the task family from the config instead, so its data (or its
    cache) must then be reachable: `learner.task` can then also draw episodes (`sample`).
    `device` (default the CPU) is where the model runs.
    Raises DataError for a missing run dir, config or checkpoint, or a corrupt checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run dir {run_dir} does not exist")
    # config.yaml is written by every run (also one started from Python); .hydra/ by older CLI runs.
    config = next((c for c in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml") if c.is_file()), None)
    if config is None:
        raise DataError(f"{run_dir} has no config.yaml (nor .hydra/config.yaml): not a metarun run dir")
    summary = read_summary(run_dir)
    try:
        cfg = OmegaConf.load(config)
        for line in overrides:
            key, eq, _ = line.partition("=")
            if not eq or OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
                raise ConfigError("override", line, f"KEY=VALUE with KEY a key of {config}")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except ConfigError:
        raise
    except Exception as e:  # unreadable YAML, an unparsable value
        raise DataError(f"cannot read {config} with overrides {list(overrides)}: {str(e).splitlines()[0]}") from None
    cfg.device = str(device)
    validate(cfg)
    if checkpoint is None:
        checkpoint = summary.get("tested_checkpoint") or ("best.pt" if cfg.get("test_checkpoint") == "best" else "checkpoint.pt")
    if checkpoint not in ("best.pt", "checkpoint.pt"):
        raise ConfigError("checkpoint", checkpoint, "best.pt or checkpoint.pt")
    path = run_dir / checkpoint
    state = read_checkpoint(path)
    record = read_preprocess(run_dir)
    inputs = None
    if record is not None and not any(line.partition("=")[0].startswith("task.") for line in overrides):
        inputs = ImageInputs(**record, device=resolve_device(cfg.device))
    # build() seeds torch's global generator; a library call should not change the caller's.
    with torch.random.fork_rng(devices=[]):
        task, model, _, algo = build(cfg, task=inputs)
    if isinstance(algo, SelfEvaluating):
        raise DataError(f"{run_dir} is a {type(algo).__name__} run; load_learner supports supervised runs "
                        "(classification or regression)")
    zeroed = restore(model, state["model"], algo.adapted, f"checkpoint {path}")
    load_algo_state(algo, state, zeroed)
    steps = summary.get("test_steps", cfg.eval_steps)
    return Learner(cfg, task, model, algo.adapted, algo.inner_lr, algo.inner_l2, steps, state["model"], zeroed,
                   adapt_rule=algo.adapt_rule, checkpoint=path.name, head_init=algo.head_init)


def read_preprocess(run_dir):
    """The run's preprocess.json (input shape, resize, invert, scale, classes), or None for runs without one."""
    path = Path(run_dir) / "preprocess.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def read_summary(run_dir):
    """The run's summary.json as a dict ({} when absent or unreadable: older or killed runs)."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def load_algo_state(algo, state, zeroed):
    """The algorithm's learned state beside the model (e.g. a learned adapt rule), when the checkpoint has it.

    When the head was zero-initialised for another number of ways, the optimizer state would not
    fit and is skipped; a learned adapt rule is still loaded (its body masks or rates apply as
    trained), and the zero-initialised tensors step at the plain inner lr."""
    if "algo" not in state:
        return
    if not zeroed:
        algo.load_state_dict(state["algo"])
    elif isinstance(getattr(algo, "adapt_rule", None), LearnedRule):
        algo.adapt_rule.load_trained(state["algo"]["adapt_rule"], plain=zeroed)


def _batch_statistics(model):
    """True when some layer normalises by the statistics of the batch it sees (conv4's BatchNorm)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Learner:
    """A trained run's model, adapted to one few-shot task at a time.

    `adapt(support_x, support_y)` runs the run's inner loop on the support set; `predict(query_x)`
    returns class probabilities (classification) or outputs (regression) of the adapted model.
    Inputs are tensors ``(n, *task.input_shape)`` or, for image tasks, lists of image paths.
    """

    def __init__(self, cfg, task, model, adapted, inner_lr, inner_l2, inner_steps, trained_state, zero_init=(),
                 adapt_rule=None, checkpoint="checkpoint.pt", head_init="learned"):
        self.cfg, self.task, self.model = cfg, task, model
        self.head_init = head_init  # where each task's head starts (metarun.inner_loop.start_fast)
        self.adapted, self.inner_lr, self.inner_l2, self.inner_steps = adapted, inner_lr, inner_l2, inner_steps
        self.adapt_rule = adapt_rule or FixedRule()  # the run's (possibly learned) per-parameter inner rates
        self.checkpoint = checkpoint  # which of the run's checkpoints was loaded
        self.trained_state = trained_state  # kept to rebuild the model for another number of ways
        self.classes = None  # support labels in output order, after adapt (classification)
        self.zero_init = list(zero_init)  # output-layer tensors zero-initialised for the current number of ways
        self.fast = None
        self.ways = task.output_dim  # outputs of the current model's head

    @property
    def input_shape(self):
        return tuple(self.task.input_shape)

    def inputs(self, x, name):
        """A float tensor (n, *input_shape) from a tensor or a list of image paths."""
        if isinstance(x, (str, Path)):
            raise DataError(f"{name} is a single path; pass a list of image paths")
        if isinstance(x, (list, tuple)) and x and all(isinstance(p, (str, Path)) for p in x):
            if not isinstance(self.task, ReadsImages):
                raise DataError(f"{name}: the task {type(self.task).__name__} does not read image files; pass a tensor")
            return self.task.load_images(list(x))
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{name} must be a tensor of shape (n, {', '.join(map(str, self.input_shape))}) "
                            f"or a list of image paths, not {type(x).__name__}")
        if tuple(x.shape[1:]) != self.input_shape or x.ndim != len(self.input_shape) + 1 or len(x) == 0:
            raise DataError(f"{name} has shape {tuple(x.shape)}; the run's model takes (n, "
                            f"{', '.join(map(str, self.input_shape))}) with n >= 1 "
                            "(image files are resized by passing their paths instead)")
        if not x.is_floating_point():
            raise DataError(f"{name} has dtype {x.dtype}; the model takes floats (images in [0, 1] as in training)")
        return x.detach().float().to(self.device)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def labels(self, support_y, n):
        """Class indices 0..ways-1 for any hashable labels (sorted when they sort, else in order of appearance)."""
        values = support_y.tolist() if isinstance(support_y, torch.Tensor) else list(support_y)
        if len(values) != n:
            raise DataError(f"support_x has {n} examples but support_y has {len(values)} labels")
        if not self.task.classification:
            return None, torch.as_tensor(values, dtype=torch.float32, device=self.device).reshape(n, -1)
        try:
            classes = sorted(set(values))
        except TypeError:  # labels of mixed types
            classes = list(dict.fromkeys(values))
        if len(classes) < 2:
            raise DataError(f"the support set has a single class ({classes[0]!r}); a few-shot task needs at least 2")
        index = {c: i for i, c in enumerate(classes)}
        return classes, torch.tensor([index[v] for v in values], device=self.device)

    def set_ways(self, ways):
        """Rebuild the model for `ways` outputs when it differs from the current head (zero-init)."""
        if ways == self.ways:
            return
        with torch.random.fork_rng(devices=[]):
            model = instantiate(self.cfg.model, input_shape=self.task.input_shape, output_dim=ways).to(self.device)
        mismatched = restore(model, self.trained_state, self.adapted, f"the support set has {ways} classes; the run's checkpoint")
        self.model, self.zero_init, self.ways = model, mismatched, ways
        if isinstance(self.adapt_rule, LearnedRule):
            self.adapt_rule.plain = frozenset(mismatched)  # a new head steps at the plain inner lr
        if mismatched:
            old = self.trained_state[mismatched[0]].shape[0]
            warnings.warn(f"metarun: {zero_init_note(mismatched, old, ways, self.head_init)}", stacklevel=3)

    @torch.no_grad()  # torch.func.grad inside still differentiates; the adapted weights come out detached
    def adapt(self, support_x, support_y, steps=None):
        """Adapt to a task from its support set; returns self.

        support_x: tensor (n, *input_shape) or list of n image paths. support_y: n labels of any
        hashable kind (ints, class-folder names); at least 2 classes. steps: inner steps, default
        the number the run's reported test figure used (`eval_steps`, or the run's `test_steps`).
        """
        steps = self.inner_steps if steps is None else steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ConfigError("steps", steps, "an integer >= 0")
        x = self.inputs(support_x, "support_x")
        classes, y = self.labels(support_y, len(x))
        if classes is not None:
            self.set_ways(len(classes))
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        prepare, predict = task_functions(self.model, params, self.adapted)
        hs = prepare(x)
        fast = start_fast(self.model, params, self.adapted, self.head_init, x, hs, y)
        # The run's adapt rule; a zero-initialised head (another number of ways) is among its `plain`
        # names, which step at the plain inner lr.
        rates = self.adapt_rule.learning_rates(params, self.inner_lr)
        self.fast = adapt(lambda p: self.task.loss_fn(predict(p, hs), y), fast, steps, rates, self.inner_l2,
                          first_order=True)
        self.params, self.classes, self.support_x = params, classes, x
        return self

    @torch.no_grad()
    def predict(self, query_x, transductive=False, chunk=64):
        """Class probabilities (n, ways) of the adapted model (outputs, for regression); call `adapt` first.

        The network's BatchNorm normalises by the statistics of the batch it sees. By default
        each query image is normalised together with the support set (the batch the head was
        adapted on), so an image's prediction does not depend on which other images are asked
        about, and a single image works. `transductive=True` normalises the query batch by its
        own statistics instead: the meta-training and meta-test protocol, which reproduces
        metarun's evaluation figures but needs a batch like a training query set. For models
        without batch statistics the two are identical.
        """
        if self.fast is None:
            raise DataError("call adapt(support_x, support_y) before predict")
        x = self.inputs(query_x, "query_x")
        prepare, predict = task_functions(self.model, self.params, self.adapted)
        if transductive or not _batch_statistics(self.model):
            out = predict(self.fast, prepare(x))
        else:
            support = self.support_x

            def one(xi):
                return predict(self.fast, prepare(torch.cat([support, xi[None]])))[-1]

            out = vmap(one, chunk_size=chunk)(x)
        out = F.softmax(out, dim=-1) if self.task.classification else out
        return out.cpu()  # results for the caller, wherever the model ran

    def predict_labels(self, query_x, transductive=False):
        """The most probable support label of each query example (the labels given to `adapt`)."""
        if not self.task.classification:
            raise DataError("predict_labels is for classification runs; use predict for regression outputs")
        probs = self.predict(query_x, transductive)
        return [self.classes[i] for i in probs.argmax(-1).tolist()]

"""The convergence presets: lengths per setting through ${pick:}, the Omniglot versions' geometry,
and launchers that replace the presets' own."""
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from conftest import REPO, run_metarun
import metarun.config  # noqa: F401  registers ${pick:}


def cfg(*overrides, hydra=False):
    with initialize_config_module("metarun.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def test_iterations_are_looked_up_per_n_and_an_explicit_value_wins():
    table = cfg("+experiment=anil_strongly_convex").scales.quick.iterations
    for n in (1, 5, 10, 20):
        assert cfg("+experiment=anil_strongly_convex", f"algo.inner_steps={n}").iterations == table[n]
    assert len({table[n] for n in (1, 20)}) == 2  # the table really differs by N
    assert cfg("+experiment=anil_strongly_convex", "algo.inner_steps=20", "iterations=7").iterations == 7
    maml = cfg("+experiment=anil_vs_maml", "method=maml", "algo.inner_steps=5")
    assert maml.iterations == maml.scales.quick.iterations.maml[5] and list(maml.algo.adapt) == ["*"]
    assert cfg("+experiment=adapted_subsets", "subset=all").iterations == cfg("+experiment=adapted_subsets").scales.quick.iterations["all"]


def test_claim_3s_step_selection_runs_maml_alone_below_anil_vs_maml_s_step_on_seeds_the_comparison_does_not_use():
    selection, comparison = cfg("+experiment=anil_vs_maml_lr_selection", hydra=True), cfg("+experiment=anil_vs_maml", hydra=True)
    params = selection.hydra.sweeper.params
    assert params.method == "maml" and list(selection.algo.adapt) == ["*"]
    assert max(float(a) for a in str(params["algo.inner_lr"]).split(",")) < comparison.algo.inner_lr
    for scale in ("quick", "full"):
        assert set(str(selection.scales[scale].seeds).split(",")).isdisjoint(str(comparison.scales[scale].seeds).split(","))
    for n in str(params["algo.inner_steps"]).split(","):
        assert cfg("+experiment=anil_vs_maml_lr_selection", f"algo.inner_steps={n}").iterations == 3000


def test_claim_3_at_the_selected_step_is_anil_vs_maml_s_sweep_with_alpha_alone_changed():
    selected, comparison = (OmegaConf.to_container(cfg(f"+experiment={p}", hydra=True), resolve=False)
                            for p in ("anil_vs_maml_selected_lr", "anil_vs_maml"))
    assert selected["hydra"]["sweeper"] == comparison["hydra"]["sweeper"]
    alpha = selected["algo"].pop("inner_lr")
    assert alpha < comparison["algo"].pop("inner_lr")
    for config in (selected, comparison):
        del config["hydra"]
    assert selected == comparison


def test_an_n_without_a_length_is_one_line_naming_the_table_keys(tmp_path):
    result = run_metarun("+experiment=anil_strongly_convex", "algo.inner_steps=3", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("metarun: error: ${pick:table,key}=3 is not allowed") and "1, 5, 10, 20" in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize("preset,head_hidden,l2", [("omniglot_anil_strongly_convex", 0, 0.1), ("omniglot_anil_nonconvex", 16, 0.0)])
def test_omniglot_presets_keep_the_geometry_on_conv4_and_the_shared_alphabets_settings(preset, head_hidden, l2):
    c = cfg(f"+experiment={preset}", hydra=True)
    assert c.task._target_.endswith("Omniglot") and c.model._target_.endswith("Conv4")
    assert (c.model.head_hidden, c.algo.inner_l2, list(c.algo.adapt)) == (head_hidden, l2, ["head.*"])
    assert (c.task.ways, c.task.shots, c.task.split, c.meta_batch_size) == (5, 1, "character", 16)
    assert c.hydra.sweeper.params["algo.inner_steps"] == "1,5,10,20"
    assert len(c.hydra.sweeper.params.seed.split(",")) >= 5


@pytest.mark.parametrize("launcher,target", [("basic", "BasicLauncher"), ("submitit_local", "LocalLauncher"),
                                             ("submitit_slurm", "SlurmLauncher")])
def test_a_launcher_on_the_command_line_replaces_the_presets_two_job_joblib(launcher, target):
    assert cfg("+experiment=omniglot_anil_nonconvex", hydra=True).hydra.launcher.n_jobs == 2
    c = cfg("+experiment=omniglot_anil_nonconvex", f"hydra/launcher={launcher}", hydra=True)
    assert c.hydra.launcher._target_.endswith(target) and "n_jobs" not in c.hydra.launcher


def test_the_readmes_slurm_command_for_the_omniglot_sweep_composes(monkeypatch):
    text = (REPO / "README.md").read_text()
    block = text.split("METARUN_DATA=/path/to/data metarun -m +experiment=omniglot_anil_nonconvex")[1].split("```")[0]
    command = block.split("metarun-report")[0].replace("\\\n", " ").split()
    overrides = ["+experiment=omniglot_anil_nonconvex", *(a.replace("<partition>", "cpu") for a in command)]
    c = cfg(*overrides, hydra=True)
    assert c.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (c.hydra.launcher.partition, c.hydra.launcher.cpus_per_task, c.threads) == ("cpu", 2, 2)
    assert c.hydra.sweeper.params["algo.inner_steps"] == "1,5,10,20"

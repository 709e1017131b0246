"""Every numeric key of each recipe's YAML has a range, and a value outside it is refused, naming the key."""
import copy
import functools
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from torchrl_vlm.training import COMMON_RANGES

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))

import dqn_minigrid  # noqa: E402
import ppo_minigrid_distill  # noqa: E402
import sac  # noqa: E402
import td3  # noqa: E402

RECIPE_MODULES = {
    "dqn_minigrid": dqn_minigrid,
    "ppo_minigrid_distill": ppo_minigrid_distill,
    "sac": sac,
    "td3": td3,
}


_COMPOSED = {}


@pytest.fixture(autouse=True, scope="module")
def _each_yaml_read_once():
    """check_config reads the recipe's YAML again on every call (to name an unknown key): ~0.1 s of ~0.15 s a
    case, for some 800 cases. The YAMLs do not change during the run, and check_known_keys only reads what
    recipe_yaml returns: read each once here."""
    from torchrl_vlm.training import config as training_config

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_config, "recipe_yaml", functools.lru_cache(maxsize=None)(training_config.recipe_yaml))
        yield


def _config(name):
    """A fresh copy of the recipe's default config (composed once: Hydra takes ~50 ms a call)."""
    if name not in _COMPOSED:
        with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
            _COMPOSED[name] = compose(name)
    return copy.deepcopy(_COMPOSED[name])


def _numeric_keys(node, prefix=""):
    """Dotted keys of the YAML whose default is a number, a bool, null-or-number or a list of numbers."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _numeric_keys(value, path + ".")
        elif isinstance(value, (bool, int, float)) or (
            isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value)
        ):
            yield path


def _bad_values(allowed):
    """Values just outside a range, and of the wrong type."""
    if allowed.kind == "bool":
        return ["false_", 1]
    if allowed.kind == "ints":
        return [[0], [], "128"]
    out = ["ten"]
    if allowed.low is not None:
        out.append(allowed.low if allowed.open_low else allowed.low - 1)
    if allowed.high is not None:
        out.append(allowed.high + 1)
    if allowed.kind == "int":
        out.append(1.5)
    if not allowed.nullable:
        out.append(None)
    return out


@pytest.mark.parametrize("name", list(RECIPE_MODULES))
def test_every_numeric_key_of_the_yaml_has_a_range(name):
    defaults = OmegaConf.to_container(_config(name), resolve=True)
    defaults.pop("hydra", None)
    ranges = {**COMMON_RANGES, **RECIPE_MODULES[name].RANGES}
    keys = set(_numeric_keys(defaults))
    assert keys - set(ranges) == set(), f"numeric keys of {name}.yaml without a range"
    # ... and every range names a key the YAML has (null defaults included: max_steps, lam_max, score_lag).
    assert {
        k for k in ranges if OmegaConf.select(OmegaConf.create(defaults), k, default="<missing>") == "<missing>"
    } == set()
    for key, allowed in ranges.items():
        assert allowed.allows(OmegaConf.select(OmegaConf.create(defaults), key)), (key, "its default is refused")


def _cases():
    for name, module in RECIPE_MODULES.items():
        for key, allowed in {**COMMON_RANGES, **module.RANGES}.items():
            for bad in _bad_values(allowed):
                yield pytest.param(name, key, bad, id=f"{name}:{key}={bad!r}")


@pytest.mark.parametrize("name, key, bad", list(_cases()))
def test_a_value_outside_its_range_is_refused_naming_the_key(name, key, bad):
    cfg = _config(name)
    OmegaConf.update(cfg, key, bad, force_add=True)
    with pytest.raises((ValueError, TypeError), match=rf"{key.replace('.', r'[.]')}=.*must be"):
        RECIPE_MODULES[name].check_config(cfg)


@pytest.mark.parametrize("name", list(RECIPE_MODULES))
@pytest.mark.parametrize("exp_name", ["x/../../escaped_dir/y", "..", "a\\b", ""])
def test_the_experiment_name_is_a_name_not_a_path(name, exp_name):
    cfg = _config(name)
    cfg.logger.exp_name = exp_name
    with pytest.raises(ValueError, match="logger.exp_name"):
        RECIPE_MODULES[name].check_config(cfg)


@pytest.mark.parametrize("name", list(RECIPE_MODULES))
def test_a_key_the_yaml_lacks_is_refused_naming_the_nearest_one(name):
    # Hydra's own hint after a typo is +key=..., which adds the key, and the recipe then ignored it.
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        cfg = compose(name, overrides=["+collector.total_frame=5"])
    with pytest.raises(
        ValueError,
        match=r"unknown config key\(s\): collector.total_frame \(did you mean "
        r"collector.total_frames\?\)",
    ):
        RECIPE_MODULES[name].check_config(cfg)
    # A value under a key whose default is not a group is a value, not a key.
    cfg = _config(name)
    if OmegaConf.select(cfg, "vlm.replica_options", default="<none>") != "<none>":
        cfg.vlm.replica_options = {"num_gpus": 1}
        RECIPE_MODULES[name].check_config(cfg)


@pytest.mark.parametrize("name", ["dqn_minigrid", "sac", "td3"])
def test_a_budget_that_never_reaches_an_update_is_warned_about(name):
    cfg = _config(name)
    cfg.collector.total_frames = 3000
    cfg.collector.init_random_frames = 10_000
    with pytest.warns(UserWarning, match="collector.init_random_frames=10000 >= collector.total_frames=3000"):
        RECIPE_MODULES[name].check_config(cfg)

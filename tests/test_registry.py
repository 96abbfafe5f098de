"""The one registry style: case rule, duplicates, did-you-mean (properties) and its users."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlox_dp.config import did_you_mean
from rlox_dp.registry import DuplicateNameError, Registry, UnknownNameError, suggest

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+/.",
               min_size=1, max_size=12)
NAMES = st.lists(NAME, min_size=1, max_size=6, unique_by=str.casefold)


@st.composite
def recased(draw: st.DrawFn, name: str) -> str:
    """``name`` with each letter's case drawn at random."""
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if f else c for c, f in zip(name, flips, strict=True))


@settings(max_examples=40, deadline=None)
@given(names=NAMES, data=st.data())
def test_lookup_ignores_case_and_lists_the_registered_spelling(names, data):
    registry: Registry[object] = Registry("widget")
    objects = {name: object() for name in names}
    for name, obj in objects.items():
        assert registry.register(name, obj) is obj
    assert registry.names() == names  # registration order, registered spelling
    for name, obj in objects.items():
        variant = data.draw(recased(name))
        assert variant in registry
        assert registry.get(variant) is obj
        assert registry.canonical(variant) == name
        registry.register(variant, obj)  # the same object again: allowed, nothing changes
        with pytest.raises(DuplicateNameError, match="already registered"):
            registry.register(variant, object())
    assert registry.names() == names and len(registry) == len(names)


@settings(max_examples=40, deadline=None)
@given(names=NAMES, query=NAME)
def test_a_miss_names_kind_name_suggestion_and_known_names(names, query):
    registry: Registry[int] = Registry("gadget")
    for i, name in enumerate(names):
        registry.register(name, i)
    if query in registry:
        return
    with pytest.raises(UnknownNameError) as info:
        registry.get(query)
    err = info.value
    assert isinstance(err, ValueError) and err.kind == "gadget" and err.name == query
    message = str(err)
    assert message.startswith(f"unknown gadget {query!r}.")
    assert message.endswith("Known gadgets: " + ", ".join(names))
    # the suggestion is did_you_mean's choice on case-folded names, in its registered spelling
    expected = did_you_mean(query.casefold(), [n.casefold() for n in names])
    assert err.suggestion == suggest(query, names)
    if err.suggestion is None:
        assert expected == "" and "Did you mean" not in message
    else:
        assert expected == f" Did you mean {err.suggestion.casefold()!r}?"
        assert f"Did you mean {err.suggestion!r}?" in message


@settings(max_examples=40, deadline=None)
@given(name=NAME.filter(lambda s: len(s) >= 4), data=st.data())
def test_a_one_letter_typo_in_any_case_is_suggested(name, data):
    index = data.draw(st.integers(0, len(name) - 1))
    typo = data.draw(recased(name[:index] + name[index + 1:]))  # one character dropped
    assert suggest(typo, [name]) == name


def test_decorator_form_check_and_unregister():
    def only_classes(name, obj):
        if not isinstance(obj, type):
            raise TypeError(f"{name}: expected a class")

    registry: Registry[type] = Registry("thing", check=only_classes)

    @registry.register("Alpha")
    class Alpha:
        pass

    assert registry.get("ALPHA") is Alpha and registry.find("alpha") is Alpha
    assert registry.find("beta") is None and registry.items() == [("Alpha", Alpha)]
    with pytest.raises(TypeError, match="expected a class"):
        registry.register("beta", 3)
    with pytest.raises(TypeError, match="non-empty string"):
        registry.register("", Alpha)
    with pytest.raises(UnknownNameError, match=r"unknown thing 3\. Known things: Alpha"):
        registry.get(3)  # type: ignore[arg-type]
    assert registry.unregister("alpha") is Alpha and "Alpha" not in registry


def _registries() -> list[tuple[Registry, str]]:
    from rlox_dp.algorithms.base import ALGORITHMS
    from rlox_dp.diffusion import SAMPLER_REGISTRY, SCHEDULE_REGISTRY
    from rlox_dp.envs import ENV_REGISTRY
    from rlox_dp.experts.labelling import STATE_ACCESS
    from rlox_dp.experts.registry import EXPERTS
    from rlox_dp.networks import DENOISER_REGISTRY

    return [(ALGORITHMS, "diffusion"), (DENOISER_REGISTRY, "unet"), (SAMPLER_REGISTRY, "DPMSolver++"),
            (SCHEDULE_REGISTRY, "squaredcos_cap_v2"), (ENV_REGISTRY, "gym_pusht/PushT-v0"),
            (EXPERTS, "Pendulum-v1"), (STATE_ACCESS, "Pendulum-v1")]


@pytest.mark.parametrize(("registry", "name"), _registries(), ids=lambda x: getattr(x, "kind", x))
def test_every_registry_of_the_package_follows_the_rules(registry, name):
    assert registry.get(name.upper()) is registry.get(name.lower()) is registry.find(name)
    assert name.casefold() in {n.casefold() for n in registry.names()}
    with pytest.raises(UnknownNameError, match=rf"unknown {registry.kind} 'no-such-name'\..*Known"):
        registry.get("no-such-name")


def test_the_public_wrappers_accept_any_case():
    from rlox_dp import get_algorithm_class
    from rlox_dp.diffusion import DDPMSampler, make_sampler, make_schedule
    from rlox_dp.networks import MLPDenoiser, build_denoiser
    from rlox_dp.presets import preset_for

    assert get_algorithm_class("Diffusion").name == "diffusion"
    assert isinstance(build_denoiser("MLP", action_dim=2, horizon=4, cond_dim=3, hidden_dim=8), MLPDenoiser)
    schedule = make_schedule("COSINE", 10)
    assert torch.equal(schedule.betas, make_schedule("cosine", 10).betas)
    assert isinstance(make_sampler("Ddpm", schedule), DDPMSampler)
    assert preset_for("DIFFUSION", "gym_pusht/pusht-v0") == preset_for("diffusion", "gym_pusht/PushT-v0") != {}
    with pytest.raises(ValueError, match=r"unknown sampler 'ddpx'\. Did you mean 'ddpm'\?"):
        make_sampler("ddpx", schedule)


def test_a_registered_denoiser_and_sampler_are_built_by_name(monkeypatch):
    from rlox_dp.diffusion import (
        SAMPLER_REGISTRY,
        DDIMSampler,
        available_samplers,
        make_sampler,
        make_schedule,
    )
    from rlox_dp.networks import (
        DENOISER_REGISTRY,
        MLPDenoiser,
        available_denoisers,
        build_denoiser,
        register_denoiser,
    )

    monkeypatch.setattr(DENOISER_REGISTRY, "_entries", dict(DENOISER_REGISTRY._entries))
    monkeypatch.setattr(SAMPLER_REGISTRY, "_entries", dict(SAMPLER_REGISTRY._entries))

    @register_denoiser("WideMLP")
    class WideMLP(MLPDenoiser):
        pass

    class Eta05(DDIMSampler):
        def __init__(self, schedule, **kwargs):
            super().__init__(schedule, eta=0.5, **kwargs)

    SAMPLER_REGISTRY.register("ddim_eta05", Eta05)
    assert "WideMLP" in available_denoisers() and "ddim_eta05" in available_samplers()
    assert isinstance(build_denoiser("widemlp", action_dim=2, horizon=4, cond_dim=3, hidden_dim=8), WideMLP)
    assert make_sampler("DDIM_ETA05", make_schedule("cosine", 10)).eta == 0.5
    with pytest.raises(TypeError, match="Denoiser subclass"):
        DENOISER_REGISTRY.register("not_a_network", object)

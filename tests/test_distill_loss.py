"""LVLM2P distillation: the KL term, where its gradients go, and masking."""
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import ProbabilisticActor, ValueOperator

from torchrl_vlm.teacher.loss import DistillA2CLoss, DistillClipPPOLoss, distillation_kl

OBS, ACTIONS, N = 4, 3, 6


def _nets(seed=0):
    torch.manual_seed(seed)
    actor = ProbabilisticActor(
        TensorDictModule(torch.nn.Linear(OBS, ACTIONS), in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    critic = ValueOperator(torch.nn.Linear(OBS, 1), in_keys=["observation"])
    return actor, critic


def _batch(actor, critic, teacher):
    td = TensorDict({"observation": torch.randn(N, OBS)}, [N])
    with torch.no_grad():
        actor(td)
        critic(td)
    td["advantage"] = torch.randn(N, 1)
    td["value_target"] = torch.randn(N, 1)
    td["teacher_probs"] = teacher
    return td


def test_kl_is_zero_when_teacher_and_student_agree_and_matches_a_hand_computation():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    assert torch.allclose(distillation_kl(torch.softmax(logits, -1), logits), torch.zeros(2), atol=1e-6)
    teacher = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    z1 = math.log(math.e + 1 + math.exp(-1))  # log Σ exp(logits[0])
    z2 = math.log(2 * math.exp(0.5) + 1)
    by_hand = [
        0.5 * (math.log(0.5) - (1.0 - z1)) + 0.5 * (math.log(0.5) - (0.0 - z1)),
        1.0 * (math.log(1.0) - (0.0 - z2)),
    ]
    assert distillation_kl(teacher, logits).tolist() == pytest.approx(by_hand, rel=1e-5)
    assert bool((distillation_kl(teacher, logits) > 0).all())
    with pytest.raises(ValueError, match="differ"):
        distillation_kl(teacher, logits[:, :2])


@pytest.mark.parametrize("loss_cls", [DistillClipPPOLoss, DistillA2CLoss])
def test_distillation_gradients_reach_the_actor_only(loss_cls):
    actor, critic = _nets()
    loss = loss_cls(actor, critic, distill_coeff=0.5)
    teacher = torch.softmax(torch.randn(N, ACTIONS), -1)
    out = loss(_batch(actor, critic, teacher))
    assert float(out["loss_distill"]) > 0
    out["loss_distill"].backward()
    actor_grads = [p.grad for p in loss.actor_network_params.values(True, True)]
    critic_grads = [p.grad for p in loss.critic_network_params.values(True, True)]
    assert all(g is not None and g.abs().sum() > 0 for g in actor_grads)
    assert all(g is None or g.abs().sum() == 0 for g in critic_grads)
    assert float(out["loss_distill"]) == pytest.approx(0.5 * float(out["distill_kl"]))


def test_the_kl_uses_the_current_actor_logits():
    actor, critic = _nets()
    loss = DistillClipPPOLoss(actor, critic, distill_coeff=1.0)
    td = _batch(actor, critic, torch.softmax(torch.randn(N, ACTIONS), -1))
    with torch.no_grad():
        logits = actor.module[0].module(td["observation"])
    expected = distillation_kl(td["teacher_probs"], logits).mean()
    assert float(loss(td)["distill_kl"]) == pytest.approx(float(expected), rel=1e-5)


def test_samples_without_a_teacher_answer_are_masked_out():
    actor, critic = _nets()
    loss = DistillClipPPOLoss(actor, critic, distill_coeff=1.0)
    teacher = torch.softmax(torch.randn(N, ACTIONS), -1)
    td = _batch(actor, critic, teacher.clone())
    full = float(loss(td)["distill_kl"])

    # Half the rows have no answer (NaN, or masked): the mean covers the other half only.
    td_nan = td.clone()
    td_nan["teacher_probs"][: N // 2] = float("nan")
    td_mask = td.clone()
    td_mask["teacher_mask"] = torch.arange(N) >= N // 2
    with torch.no_grad():
        logits = actor.module[0].module(td["observation"])
    half = float(distillation_kl(teacher[N // 2 :], logits[N // 2 :]).mean())
    for masked in (td_nan, td_mask):
        out = loss(masked)
        assert torch.isfinite(out["loss_distill"])
        assert float(out["distill_kl"]) == pytest.approx(half, rel=1e-5)
    assert half != pytest.approx(full)

    # No answer at all: zero, not NaN, and no gradient.
    td_none = td.clone()
    td_none["teacher_mask"] = torch.zeros(N, dtype=torch.bool)
    out = loss(td_none)
    assert float(out["loss_distill"]) == 0.0
    with pytest.raises(KeyError, match="teacher_probs"):
        loss(td.exclude("teacher_probs"))


def test_hard_targets_and_the_decay_schedule():
    actor, critic = _nets()
    teacher = torch.tensor([[0.6, 0.3, 0.1]]).expand(N, ACTIONS).clone()
    td = _batch(actor, critic, teacher)
    hard = DistillClipPPOLoss(actor, critic, distill_coeff=1.0, hard_targets=True)
    with torch.no_grad():
        logits = actor.module[0].module(td["observation"])
    one_hot = torch.nn.functional.one_hot(torch.zeros(N, dtype=torch.long), ACTIONS).float()
    assert float(hard(td)["distill_kl"]) == pytest.approx(float(distillation_kl(one_hot, logits).mean()), rel=1e-5)

    decaying = DistillA2CLoss(actor, critic, distill_coeff=0.01, distill_decay_frames=1000)
    assert decaying.distill_coeff == pytest.approx(0.01)
    decaying.step_distillation(250)
    assert decaying.distill_coeff == pytest.approx(0.0075)
    decaying.step_distillation(10_000)
    assert decaying.distill_coeff == 0.0
    assert "distill_frames" in decaying.state_dict()
    with pytest.raises(ValueError, match="distill_coeff"):
        DistillClipPPOLoss(actor, critic, distill_coeff=-1.0)

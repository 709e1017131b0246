"""IQN: the quantile Huber loss by hand, quantiles recovered on a bandit, and the loss's TorchRL contract."""
import math
from statistics import NormalDist

import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import HardUpdate, SoftUpdate

from torchrl_vlm.objectives import IQNLoss, IQNNetwork, IQNQValues, quantile_huber_loss
from torchrl_vlm.objectives.iqn import quantile_huber_loss_autograd


def test_quantile_huber_loss_by_hand():
    # One online level tau = 0.25 against two target samples, kappa = 1:
    #   delta = +0.5: |0.25 - 0| * 0.5 * 0.5**2        = 0.03125
    #   delta = -2.0: |0.25 - 1| * 1 * (2 - 0.5) / 1   = 1.125
    # mean over the targets: 0.578125.
    delta = torch.tensor([[[0.5, -2.0]]])
    taus = torch.tensor([[0.25]])
    assert quantile_huber_loss(delta, taus, kappa=1.0).item() == pytest.approx(0.578125)
    assert quantile_huber_loss_autograd(delta, taus, kappa=1.0).item() == pytest.approx(0.578125)
    # kappa = 2 keeps -2.0 in the quadratic zone: 0.75 * 0.5 * 4 / 2 = 0.75; +0.5: 0.25 * 0.125 / 2.
    assert quantile_huber_loss(delta, taus, kappa=2.0).item() == pytest.approx((0.75 + 0.015625) / 2)
    with pytest.raises(ValueError, match="kappa must be > 0"):
        quantile_huber_loss(delta, taus, kappa=0.0)


@pytest.mark.parametrize("kappa", [1.0, 0.3])
def test_the_written_out_gradient_is_the_loss_s_gradient(kappa):
    # Numerical gradients in float64, away from δ = 0 (where the weight jumps) and |δ| = κ.
    torch.manual_seed(0)
    delta = torch.randn(3, 4, 5, dtype=torch.float64)
    delta = torch.where(delta.abs() < 0.05, delta + 0.1, delta)
    delta = torch.where((delta.abs() - kappa).abs() < 0.05, delta * 1.2, delta).requires_grad_()
    taus = torch.rand(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda d: quantile_huber_loss(d, taus, kappa), (delta,))
    # and against autograd through the formula, in the loss's float32
    d32 = delta.detach().float().requires_grad_()
    reference = quantile_huber_loss_autograd(d32, taus.float(), kappa)
    torch.testing.assert_close(quantile_huber_loss(d32, taus.float(), kappa), reference)
    grad, = torch.autograd.grad(quantile_huber_loss(d32, taus.float(), kappa).sum(), d32)
    ref_grad, = torch.autograd.grad(reference.sum(), d32)
    torch.testing.assert_close(grad, ref_grad)


def batch(obs, action, reward, next_obs, terminated):
    b = obs.shape[0]
    return TensorDict({"observation": obs, "action": action, ("next", "observation"): next_obs,
                       ("next", "reward"): reward.reshape(b, 1), ("next", "terminated"): terminated.reshape(b, 1)},
                      batch_size=[b])


STEPS = 600


def test_quantiles_of_a_two_armed_bandit_are_recovered():
    """One state, two arms, episodes of one step: IQN must learn each arm's return quantiles,
    N(0, 1) and N(2, 0.5^2), from a fixed sample of 2048 rewards an arm."""
    torch.manual_seed(0)
    n, batch_size = 2048, 256
    rewards = torch.stack([torch.randn(n), 2 + 0.5 * torch.randn(n)])  # [arm, n]
    net = IQNNetwork(1, 2, hidden=(32, 32))
    loss = IQNLoss(net, num_quantiles=32, num_target_quantiles=32, num_policy_quantiles=8)
    HardUpdate(loss, value_network_update_interval=1)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    ones = torch.ones(batch_size, 1)
    for _ in range(STEPS):
        arm = torch.randint(0, 2, (batch_size,))
        reward = rewards[arm, torch.randint(0, n, (batch_size,))]
        out = loss(batch(ones, arm, reward, ones, torch.ones(batch_size, dtype=torch.bool)))
        optim.zero_grad()
        out["loss"].backward()
        optim.step()
    levels = torch.tensor([[0.1, 0.5, 0.9]])
    with torch.no_grad():
        learned = net(torch.ones(1, 1), levels)[0]  # [3, 2]
    for a, (mu, sigma) in enumerate([(0.0, 1.0), (2.0, 0.5)]):
        for k, tau in enumerate(levels[0].tolist()):
            true = NormalDist(mu, sigma).inv_cdf(tau)
            density = NormalDist(mu, sigma).pdf(true)
            # 4 standard errors of a tau-quantile estimated from one batch's samples of this arm (~128):
            # the slowest-converging view of the data the loss sees, so a fit within it is what SGD delivers.
            bound = 4 * math.sqrt(tau * (1 - tau) / (batch_size / 2)) / density
            err = abs(learned[k, a].item() - true)
            print(f'arm {a} tau {tau:.1f}: error {err:.3f}, bound {bound:.3f}')
            assert err < bound, (a, tau, err, bound)
    # The Q-values used for acting are the mean quantiles: arm 1 is better.
    q = IQNQValues(net, num_quantiles=256)(torch.ones(4, 1))
    assert q.shape == (4, 2) and bool((q[:, 1] > q[:, 0] + 1).all())


def test_the_loss_writes_td_errors_weights_samples_and_discounts_n_steps():
    torch.manual_seed(1)
    net = IQNNetwork(3, 2, hidden=(16,))
    loss = IQNLoss(net, num_quantiles=8, num_target_quantiles=8, num_policy_quantiles=4, gamma=0.5)
    HardUpdate(loss, value_network_update_interval=1)
    td = batch(torch.randn(6, 3), torch.randint(0, 2, (6,)), torch.randn(6), torch.randn(6, 3),
               torch.zeros(6, dtype=torch.bool))
    out = loss(td)
    assert out["loss"].ndim == 0 and td["td_error"].shape == (6,) and bool((td["td_error"] > 0).all())
    out["loss"].backward()
    assert all(p.grad is not None for p in net.parameters())
    # Zero importance weights zero the loss; one-hot actions read as their indices.
    torch.manual_seed(2)
    zero = td.clone().set("priority_weight", torch.zeros(6))
    assert loss(zero)["loss"].item() == 0.0
    onehot = td.clone().set("action", torch.nn.functional.one_hot(td["action"], 2))
    torch.manual_seed(3)
    a = loss(onehot)["loss"]
    torch.manual_seed(3)
    assert loss(td.clone())["loss"].item() == pytest.approx(a.item())
    # A terminal transition's target is its reward alone, whatever the discount or steps_to_next_obs.
    term = td.clone().set(("next", "terminated"), torch.ones(6, 1, dtype=torch.bool))
    torch.manual_seed(4)
    x = loss(term)["loss"]
    torch.manual_seed(4)
    assert loss(term.clone().set("steps_to_next_obs", torch.full((6, 1), 3)))["loss"].item() == pytest.approx(x.item())
    # A live one is discounted by gamma ** steps_to_next_obs: two steps at 0.5 are one step at 0.25.
    two_steps = td.clone().set("steps_to_next_obs", torch.full((6, 1), 2))
    torch.manual_seed(8)
    y = loss(two_steps)["loss"]
    loss.gamma = 0.25
    torch.manual_seed(8)
    assert loss(td.clone().set("steps_to_next_obs", torch.ones(6, 1)))["loss"].item() == pytest.approx(y.item())
    torch.manual_seed(8)
    assert loss(td.clone())["loss"].item() == pytest.approx(y.item())  # no steps_to_next_obs: one step
    loss.gamma = 0.5
    with pytest.raises(TypeError, match="IQNNetwork"):
        IQNLoss(torch.nn.Linear(3, 2))


def test_the_keys_can_be_renamed_as_in_torchrl_losses():
    torch.manual_seed(5)
    net = IQNNetwork(3, 2, hidden=(8,))
    loss = IQNLoss(net, num_quantiles=4, num_target_quantiles=4, num_policy_quantiles=4)
    HardUpdate(loss, value_network_update_interval=1)
    td = batch(torch.randn(5, 3), torch.randint(0, 2, (5,)), torch.randn(5), torch.randn(5, 3),
               torch.zeros(5, dtype=torch.bool))
    assert set(loss.in_keys) == {"observation", "action", ("next", "observation"), ("next", "reward"),
                                 ("next", "terminated")}
    torch.manual_seed(6)
    expected = loss(td.clone())["loss"]
    renamed = td.rename_key_("observation", "state").rename_key_(("next", "observation"), ("next", "state"))
    loss.set_keys(observation="state", priority="priority")
    assert ("next", "state") in loss.in_keys
    torch.manual_seed(6)
    assert loss(renamed)["loss"].item() == pytest.approx(expected.item())
    assert "priority" in renamed.keys() and "td_error" not in renamed.keys()
    # TorchRL's switch for importance weights: off, a zero weight no longer zeroes the loss.
    loss.use_prioritized_weights = False
    assert loss(renamed.set("priority_weight", torch.zeros(5)))["loss"].item() > 0
    with pytest.raises(ValueError, match="not an accepted tensordict key"):
        loss.set_keys(pixels="frames")


@pytest.mark.parametrize("updater", ["hard", "soft"])
def test_the_target_copy_moves_only_when_its_updater_steps(updater):
    torch.manual_seed(7)
    net = IQNNetwork(3, 2, hidden=(8,))
    loss = IQNLoss(net, num_quantiles=4, num_target_quantiles=4, num_policy_quantiles=4)
    update = (HardUpdate(loss, value_network_update_interval=2) if updater == "hard"
              else SoftUpdate(loss, tau=0.5))
    optim = torch.optim.SGD(loss.parameters(), lr=0.1)
    td = batch(torch.randn(6, 3), torch.randint(0, 2, (6,)), torch.randn(6), torch.randn(6, 3),
               torch.zeros(6, dtype=torch.bool))
    target = lambda: loss.target_value_network_params.flatten_keys().clone()  # noqa: E731
    online = lambda: loss.value_network_params.flatten_keys().clone()  # noqa: E731
    before = target()
    optim.zero_grad()
    loss(td.clone())["loss"].backward()
    optim.step()
    assert (online() != before).any() and (target() == before).all()  # training moves the online copy only
    update.step()
    if updater == "soft":  # halfway to the online weights
        torch.testing.assert_close(target(), 0.5 * before + 0.5 * online())
    else:  # a copy once the interval has passed (TorchRL counts it out), never a partial one
        steps = 1
        while (target() == before).all() and steps < 5:
            update.step()
            steps += 1
        assert steps <= 3
        torch.testing.assert_close(target(), online())

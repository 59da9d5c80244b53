"""hdpo_loss against hand-computed values, its DPO special case, live regulariser gradients, global weights."""

import math

import pytest
import torch

from polyalign.training.preference_loss import hdpo_loss

PC, PR = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -18.0])   # policy summed log-probs
RC, RR = torch.tensor([-11.0, -19.0]), torch.tensor([-11.0, -19.0])   # reference
LC, LR = torch.tensor([5.0, 10.0]), torch.tensor([4.0, 8.0])          # response lengths
DC, DR = torch.tensor([0.1, 0.5]), torch.tensor([1.5, 0.2])           # critic distances


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_every_term_matches_hand_computed_values():
    beta, gamma, lam, alpha, m_max = 0.5, 2.0, 0.3, 0.2, 1.0
    loss, parts = hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, torch.tensor([1.5, 0.5]), beta=beta, gamma=gamma,
                            lam=lam, alpha=alpha, m_max=m_max)
    # pair 1: ratios c = +1, r = -1 -> h = 0.5 * 2 = 1; offset = 2 * min(1.4, 1) = 2
    # pair 2: ratios c = -1, r = +1 -> h = -1;          offset = 2 * clip(-0.3, 0, 1) = 0
    pref = (1.5 * -math.log(sig(1 - 2)) + 0.5 * -math.log(sig(-1))) / 2
    p1 = sig(0.5 * (1 / 5 - (-1) / 4))
    p2 = sig(0.5 * (-1 / 10 - 1 / 8))
    reg = (p1 * 0.1 + (1 - p1) * 1.5 + p2 * 0.5 + (1 - p2) * 0.2) / 2
    nll = (10 / 5 + 20 / 10) / 2
    assert parts["preference"].item() == pytest.approx(pref, rel=1e-6)
    assert parts["hdpo/offset"].item() == pytest.approx(1.0)
    assert parts["hdpo/reg"].item() == pytest.approx(reg, rel=1e-6)
    assert parts["hdpo/nll"].item() == pytest.approx(nll)
    assert parts["hdpo/dist_gap"].item() == pytest.approx((1.4 - 0.3) / 2)
    assert parts["rewards/accuracies"].item() == 0.5
    assert parts["rewards/chosen"].item() == pytest.approx(0.0)
    assert loss.item() == pytest.approx(pref + lam * reg + alpha * nll, rel=1e-6)


def test_without_extra_terms_it_is_sigmoid_dpo():
    beta = 0.1
    loss, _ = hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, torch.ones(2), beta=beta)
    h = beta * ((PC - RC) - (PR - RR))
    assert loss.item() == pytest.approx((-torch.nn.functional.logsigmoid(h)).mean().item(), abs=1e-6)
    dpo = -torch.log(torch.sigmoid(h)).mean()
    assert abs(loss.item() - dpo.item()) < 1e-6


def test_regulariser_gradient_is_alive_for_long_responses():
    # long answers: summed log-probs in the thousands, where the paper's raw gap saturated sigma to 0 or 1
    pc = torch.tensor([-3000.0], requires_grad=True)
    pr = torch.tensor([-2500.0], requires_grad=True)
    loss, _ = hdpo_loss(pc, pr, torch.tensor([-3010.0]), torch.tensor([-2490.0]), torch.tensor([600.0]),
                        torch.tensor([500.0]), torch.tensor([0.2]), torch.tensor([2.0]), beta=0.1, lam=1.0)
    loss.backward()
    assert pc.grad.abs().item() > 1e-6 and pr.grad.abs().item() > 1e-6
    # and it pushes toward the response closer to human support: raise log pi(chosen), lower log pi(rejected)
    assert pc.grad.item() < 0 < pr.grad.item()


def test_regulariser_gradient_vanishes_only_when_distances_are_equal():
    pc = torch.tensor([-30.0], requires_grad=True)
    loss, _ = hdpo_loss(pc, torch.tensor([-25.0]), torch.tensor([-31.0]), torch.tensor([-24.0]),
                        torch.tensor([6.0]), torch.tensor([5.0]), torch.tensor([0.7]), torch.tensor([0.7]),
                        beta=0.1, lam=1.0)
    loss.backward()
    dpo_only = torch.tensor([-30.0], requires_grad=True)
    ref, _ = hdpo_loss(dpo_only, torch.tensor([-25.0]), torch.tensor([-31.0]), torch.tensor([-24.0]),
                       torch.tensor([6.0]), torch.tensor([5.0]), torch.tensor([0.7]), torch.tensor([0.7]), beta=0.1)
    ref.backward()
    assert pc.grad.item() == pytest.approx(dpo_only.grad.item())


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_weights_are_global_so_batch_size_does_not_change_the_epoch_loss(batch_size):
    g = torch.Generator().manual_seed(0)
    n = 16
    pc, pr, rc, rr = (torch.randn(n, generator=g) * 5 - 20 for _ in range(4))
    lens = torch.randint(1, 30, (n,), generator=g).float()
    dc, dr = torch.rand(n, generator=g), torch.rand(n, generator=g)
    w = torch.rand(n, generator=g) * 2
    w = w / w.mean()  # normalised over the whole dataset, once
    total = 0.0
    for s in range(0, n, batch_size):
        b = slice(s, s + batch_size)
        loss, _ = hdpo_loss(pc[b], pr[b], rc[b], rr[b], lens[b], lens[b], dc[b], dr[b], w[b], beta=0.1,
                            gamma=1.0, lam=0.5, alpha=0.1)
        total += loss.item() * len(pc[b]) / n
    full, _ = hdpo_loss(pc, pr, rc, rr, lens, lens, dc, dr, w, beta=0.1, gamma=1.0, lam=0.5, alpha=0.1)
    assert total == pytest.approx(full.item(), rel=1e-5)


def test_label_smoothing_ipo_and_bad_beta():
    smooth, _ = hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, beta=0.5, label_smoothing=0.1)
    h = torch.tensor([1.0, -1.0])
    expected = (-(0.9) * torch.nn.functional.logsigmoid(h) - 0.1 * torch.nn.functional.logsigmoid(-h)).mean()
    assert smooth.item() == pytest.approx(expected.item(), rel=1e-6)
    ipo, _ = hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, beta=0.5, loss_type="ipo")
    assert ipo.item() == pytest.approx(((2 - 1) ** 2 + (-2 - 1) ** 2) / 2)
    with pytest.raises(ValueError, match="beta"):
        hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, beta=0.0)

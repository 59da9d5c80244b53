"""HDPO's extras (objectives/compose.py) on the sigmoid, cDPO and IPO base losses against hand-computed values,
the DPO special case, live regulariser gradients, global weights. Every base loss alone: test_objectives.py."""

import math

import pytest
import torch

from polyalign.training.objectives.batch import PairBatch
from polyalign.training.objectives.compose import preference_loss

PC, PR = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -18.0])   # policy summed log-probs
RC, RR = torch.tensor([-11.0, -19.0]), torch.tensor([-11.0, -19.0])   # reference
LC, LR = torch.tensor([5.0, 10.0]), torch.tensor([4.0, 8.0])          # response lengths
DC, DR = torch.tensor([0.1, 0.5]), torch.tensor([1.5, 0.2])           # critic distances


def sig(x):
    return 1 / (1 + math.exp(-x))


def hdpo_loss(pc, pr, rc, rr, lc, lr, dc, dr, weights=None, *, beta, gamma=0.0, lam=0.0, alpha=0.0, m_max=2.0,
              label_smoothing=0.0, loss_type="sigmoid", anchor=None):
    """DESIGN §8's loss with its extras named as there: label_smoothing > 0 is the cdpo base loss."""
    batch = PairBatch(policy_chosen=pc, policy_rejected=pr, len_chosen=lc, len_rejected=lr, d_chosen=dc,
                      d_rejected=dr, weight=torch.ones_like(pc) if weights is None else weights, ref_chosen=rc,
                      ref_rejected=rr, anchor_logps=anchor[0] if anchor else None,
                      anchor_lengths=anchor[1] if anchor else None)
    loss, knobs = ("cdpo", {"eps": label_smoothing}) if label_smoothing else (loss_type, {})
    total, parts, _ = preference_loss(batch, loss, beta, knobs, hdpo_gamma=gamma, hdpo_m_max=m_max, hdpo_lam=lam,
                                      alpha=alpha)
    return total, parts


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
    # by hand: h = 0.1 * (+1 + 1) = 0.2 and -0.2; log(1 + e^-0.2) = 0.5981388693, log(1 + e^0.2) = 0.7981388693
    assert loss.item() == pytest.approx((0.5981388693 + 0.7981388693) / 2, rel=1e-7)
    # TRL 1.16 sigmoid: -logsigmoid(beta * (chosen_logratios - rejected_logratios)), same order of operations,
    # hence bit for bit in float64
    pc, pr, rc, rr = (t.double() for t in (PC, PR, RC, RR))
    loss64, _ = hdpo_loss(pc, pr, rc, rr, LC, LR, DC.double(), DR.double(), torch.ones(2, dtype=torch.float64),
                          beta=beta)
    assert loss64.item() == (-torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr)))).mean().item()


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


def test_bad_beta_and_unknown_loss_type_are_refused():
    with pytest.raises(ValueError, match="beta"):
        hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, beta=0.0)
    with pytest.raises(ValueError, match="unknown preference loss 'hinge'"):
        hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, beta=0.1, loss_type="hinge")


def test_label_smoothing_is_conservative_dpo_by_hand():
    # h = +1 and -1 (see above); cDPO with eps = 0.1: -0.9 log sigma(h) - 0.1 log sigma(-h)
    # sigma(1) = 0.7310585786, sigma(-1) = 0.2689414214
    # pair 1: -0.9 log 0.7310585786 - 0.1 log 0.2689414214 = 0.9 * 0.3132616875 + 0.1 * 1.3132616875 = 0.4132616875
    # pair 2: -0.9 log 0.2689414214 - 0.1 log 0.7310585786 = 0.9 * 1.3132616875 + 0.1 * 0.3132616875 = 1.2132616875
    smooth, _ = hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, beta=0.5, label_smoothing=0.1)
    assert smooth.item() == pytest.approx((0.4132616875 + 1.2132616875) / 2, rel=1e-6)


def test_label_smoothing_stops_pushing_at_the_cdpo_optimum():
    # with the label flipped with probability eps, the loss of one pair is smallest at h* = log((1 - eps) / eps),
    # where plain DPO would keep pushing h up
    eps, beta = 0.2, 0.5
    h_star = math.log((1 - eps) / eps)
    pc = torch.tensor([h_star / beta], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    loss, _ = hdpo_loss(pc, zero, zero, zero, zero + 3, zero + 3, zero, zero, beta=beta, label_smoothing=eps)
    loss.backward()
    assert abs(pc.grad.item()) < 1e-12
    plain = pc.detach().clone().requires_grad_(True)
    hdpo_loss(plain, zero, zero, zero, zero + 3, zero + 3, zero, zero, beta=beta)[0].backward()
    assert plain.grad.item() < -0.01


def test_ipo_is_trls_length_averaged_ipo_by_hand():
    # TRL 1.16 IPO: (ratio_c / |y_c| - ratio_r / |y_r| - 1 / (2 beta))^2, beta = 0.5 -> 1 / (2 beta) = 1
    # pair 1: ratios +1 over 5 tokens, -1 over 4 -> delta = 0.2 + 0.25 = 0.45;   (0.45 - 1)^2 = 0.3025
    # pair 2: ratios -1 over 10 tokens, +1 over 8 -> delta = -0.1 - 0.125 = -0.225; (-1.225)^2 = 1.500625
    ipo, _ = hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, beta=0.5, loss_type="ipo")
    assert ipo.item() == pytest.approx((0.3025 + 1.500625) / 2, rel=1e-6)


def test_ipo_critic_offset_by_hand():
    # gamma = 2, m_max = 1: m = 2 for pair 1 (gap 1.4 clipped to 1), 0 for pair 2 (negative gap)
    # target (1/2 + m) / beta with beta = 0.5: pair 1 -> 5, pair 2 -> 1
    # pair 1: (0.45 - 5)^2 = 20.7025; pair 2: (-0.225 - 1)^2 = 1.500625; weights 1.5 and 0.5
    ipo, _ = hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, torch.tensor([1.5, 0.5]), beta=0.5, gamma=2.0, m_max=1.0,
                       loss_type="ipo")
    assert ipo.item() == pytest.approx((1.5 * 20.7025 + 0.5 * 1.500625) / 2, rel=1e-6)


@pytest.mark.parametrize("m", [0.0, 0.5, 1.5])
def test_critic_offset_shifts_the_reward_margin_by_m_in_both_losses(m):
    # the offset is in reward units (beta x log-ratio): where the unshifted loss sits at reward margin r, the
    # shifted one sits at r + m. For IPO the reward margin is beta x the length-averaged gap.
    beta, lc, lr = 0.25, 4.0, 6.0
    one = torch.ones(1, dtype=torch.float64)

    def loss(kind, margin, offset):
        # chosen ratio and rejected ratio chosen so that the relevant reward margin equals `margin`
        if kind == "ipo":
            pc, pr = one * (margin / beta) * lc / 2, -one * (margin / beta) * lr / 2
        else:
            pc, pr = one * margin / beta / 2, -one * margin / beta / 2
        value, _ = hdpo_loss(pc, pr, 0 * one, 0 * one, lc * one, lr * one, 0 * one, offset * one, beta=beta,
                             gamma=1.0, m_max=10.0, loss_type=kind)
        return value.item()

    for kind in ("sigmoid", "ipo"):
        for r in (-1.0, 0.3, 0.5, 2.0):
            assert loss(kind, r + m, m) == pytest.approx(loss(kind, r, 0.0), rel=1e-9, abs=1e-12), (kind, r)
    assert loss("ipo", 0.5 + m, m) == pytest.approx(0.0, abs=1e-12)  # IPO's optimum moves from 1/2 to 1/2 + m


def reference_loss(pc, pr, rc, rr, lc, lr, dc, dr, w, beta, gamma, lam, alpha, m_max, eps, kind):
    """The loss written out pair by pair on Python floats, from the definitions (not the implementation)."""
    def softplus(x):  # -log sigma(-x), written stably
        return max(x, 0.0) + math.log1p(math.exp(-abs(x)))

    total_pref = total_reg = total_nll = 0.0
    n = len(pc)
    for i in range(n):
        nc, nr = max(lc[i], 1.0), max(lr[i], 1.0)
        reward_c, reward_r = beta * (pc[i] - rc[i]), beta * (pr[i] - rr[i])
        m = gamma * min(max(dr[i] - dc[i], 0.0), m_max)
        if kind == "sigmoid":
            z = reward_c - reward_r - m
            pref = (1 - eps) * softplus(-z) + eps * softplus(z)
        else:
            per_token_gap = (pc[i] - rc[i]) / nc - (pr[i] - rr[i]) / nr
            pref = (per_token_gap - 1 / (2 * beta) - m / beta) ** 2
        total_pref += w[i] * pref
        prob_c = 1 / (1 + math.exp(-(beta * ((pc[i] - rc[i]) / nc - (pr[i] - rr[i]) / nr))))
        total_reg += prob_c * dc[i] + (1 - prob_c) * dr[i]
        total_nll += -pc[i] / nc
    return (total_pref + lam * total_reg + alpha * total_nll) / n


@pytest.mark.parametrize(("kind", "eps"), [("sigmoid", 0.0), ("sigmoid", 0.15), ("ipo", 0.0)])
def test_loss_matches_an_independent_float_computation(kind, eps):
    g = torch.Generator().manual_seed(7)
    n = 6
    pc, pr, rc, rr = (torch.randn(n, generator=g, dtype=torch.float64) * 8 - 30 for _ in range(4))
    lc, lr = (torch.randint(0, 40, (n,), generator=g).double() for _ in range(2))  # a zero length is clamped to 1
    dc, dr = torch.rand(n, generator=g, dtype=torch.float64) * 2, torch.rand(n, generator=g, dtype=torch.float64) * 2
    w = torch.rand(n, generator=g, dtype=torch.float64) * 2
    settings = {"beta": 0.2, "gamma": 0.7, "lam": 0.4, "alpha": 0.3, "m_max": 1.2}
    loss, _ = hdpo_loss(pc, pr, rc, rr, lc, lr, dc, dr, w, label_smoothing=eps, loss_type=kind, **settings)
    expected = reference_loss(*(t.tolist() for t in (pc, pr, rc, rr, lc, lr, dc, dr, w)), *settings.values(),
                              eps, kind)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def sig_f(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_sigmoid_gradient_matches_the_hand_derived_one(eps):
    # L = (1/n) sum_i w_i [-(1-eps) log sigma(h_i - m_i) - eps log sigma(m_i - h_i)],  h_i = beta (pc - rc - pr + rr)
    # dL/dpc_i = (w_i beta / n) [-(1-eps) sigma(m_i - h_i) + eps sigma(h_i - m_i)],  dL/dpr_i = -dL/dpc_i
    beta, gamma, m_max = 0.5, 2.0, 1.0
    w = [1.5, 0.5]
    pc = PC.double().requires_grad_(True)
    pr = PR.double().requires_grad_(True)
    loss, _ = hdpo_loss(pc, pr, RC.double(), RR.double(), LC, LR, DC.double(), DR.double(),
                        torch.tensor(w, dtype=torch.float64), beta=beta, gamma=gamma, m_max=m_max,
                        label_smoothing=eps)
    loss.backward()
    h, m = [1.0, -1.0], [2.0, 0.0]  # from the values above
    expected = [w[i] * beta / 2 * (-(1 - eps) * sig_f(m[i] - h[i]) + eps * sig_f(h[i] - m[i])) for i in range(2)]
    assert pc.grad.tolist() == pytest.approx(expected, rel=1e-12)
    assert pr.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-12)


def test_ipo_gradient_matches_the_hand_derived_one():
    # L = (1/n) sum_i (delta_i - t_i)^2, delta_i = ratio_c / |y_c| - ratio_r / |y_r|, t_i = (1/2 + m_i) / beta
    # dL/dpc_i = 2 (delta_i - t_i) / (n |y_c|),   dL/dpr_i = -2 (delta_i - t_i) / (n |y_r|)
    # beta = 0.5, gamma = 2, m_max = 1: delta = (0.45, -0.225), t = (5, 1)
    pc = PC.double().requires_grad_(True)
    pr = PR.double().requires_grad_(True)
    loss, _ = hdpo_loss(pc, pr, RC.double(), RR.double(), LC, LR, DC.double(), DR.double(), beta=0.5, gamma=2.0,
                        m_max=1.0, loss_type="ipo")
    loss.backward()
    assert pc.grad.tolist() == pytest.approx([2 * (0.45 - 5) / (2 * 5), 2 * (-0.225 - 1) / (2 * 10)], rel=1e-12)
    assert pr.grad.tolist() == pytest.approx([-2 * (0.45 - 5) / (2 * 4), -2 * (-0.225 - 1) / (2 * 8)], rel=1e-12)


def test_the_nll_anchor_scores_the_human_answers_when_the_chosen_sides_are_samples():
    human_logps, human_lengths = torch.tensor([-6.0, -30.0]), torch.tensor([3.0, 10.0])
    base, base_parts = hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, beta=0.5)
    loss, parts = hdpo_loss(PC, PR, RC, RR, LC, LR, DC, DR, beta=0.5, alpha=0.2,
                            anchor=(human_logps, human_lengths))
    nll = (6 / 3 + 30 / 10) / 2  # the human answers' per-token NLL, not the chosen samples' (10/5 + 20/10) / 2
    assert parts["hdpo/nll"].item() == pytest.approx(nll)
    assert loss.item() == pytest.approx(base.item() + 0.2 * nll)
    assert parts["rewards/margins"] == base_parts["rewards/margins"]  # the preference term is the pairs' own

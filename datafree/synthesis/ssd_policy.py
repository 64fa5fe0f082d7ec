"""SSD-KD's sampling policy: how KD batches are drawn from the replay buffer (ssd.py, ssd_buffer.py).

``SamplingPolicy`` is the paper's reinforcement-learned priority sampling as built here: a softmax over
features of each stored image, updated by REINFORCE with the student's progress on its draws as the
reward (``draw_rewards``); ``importance_beta`` is the schedule of the importance-sampling exponent.
"""
import torch
import torch.nn.functional as F

PHI_FLOOR = 1e-3     # the policy's phi feature is log(max(phi, PHI_FLOOR)): finite for any difficulty


def importance_beta(beta0, done, total):
    """beta rises linearly from beta0 at the first KD step to 1 at the last (as in PER)."""
    return beta0 + (1 - beta0) * min(1.0, done / max(total, 1))


def draw_rewards(before, after, kind, weights=None):
    """The policy's reward of each draw: the student's progress on it (KL before its KD step minus
    after), or with ``relative`` that progress over KL before. Absolute progress is largest on the
    images the student fits worst, so it taught the policy to draw a few ambiguous images ever more
    (on digits, one image got 39% of the draws).

    ``weights`` (N,): each draw's weight in the KD loss of the step (importance weight x phi). To first
    order a step's progress on an image grows with the weight the image had in it, so a reward left
    undivided would teach the policy to draw what the loss already weighs up; divided, it is the
    progress per unit of weight, which only the image itself decides."""
    progress = before - after
    if weights is not None:
        progress = progress / weights.clamp_min(1e-6)
    return progress if kind == "progress" else progress / before.clamp_min(1e-6)


class SamplingPolicy:
    """A softmax policy over the stored images, learned by REINFORCE.

    pi(i) = softmax_i(theta . f_i) with the features f_i = (log priority_i, log max(phi_i,
    PHI_FLOOR), log(1 + KD steps since image i was last drawn or admitted)). theta starts at
    (alpha, 0, 0), which is prioritised replay's p_i^alpha / sum_j p_j^alpha exactly.

    After a KD step on draws i_1..i_n, each draw's reward is the student's progress on it,
    r_k = KL_before(i_k) - KL_after(i_k); its advantage A_k = (r_k - mean r) / (std r + 1e-8)
    (the batch is the baseline; std over the batch, not Bessel-corrected); and

        theta <- theta + lr * mean_k A_k (f_{i_k} - sum_j pi_j f_j)

    with the features and pi of the draw (the gradient of log pi(i_k) is f_{i_k} - E_pi[f]).
    """

    FEATURES = ("log_priority", "log_phi", "log_staleness")

    def __init__(self, alpha, lr, device):
        self.lr = lr
        self.theta = torch.tensor([alpha, 0.0, 0.0], device=device)
        self.updates = 0

    @staticmethod
    def features(priority, phi, staleness):
        return torch.stack([priority.log(), phi.clamp_min(PHI_FLOOR).log(), torch.log1p(staleness.float())], dim=1)

    def probabilities(self, features):
        return F.softmax(features @ self.theta, dim=0)

    def update(self, drawn_features, mean_features, rewards):
        """One REINFORCE step; returns the advantages."""
        rewards = rewards.float()
        advantage = (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-8)
        gradient = (advantage[:, None] * (drawn_features - mean_features)).mean(dim=0)
        # a non-finite reward (a diverged student step) leaves theta as it was; no host read
        self.theta = torch.where(torch.isfinite(gradient).all(), self.theta + self.lr * gradient, self.theta)
        self.updates += 1
        return advantage

    def state_dict(self):
        return {"theta": self.theta.cpu(), "updates": self.updates}

    def load_state_dict(self, state):
        self.theta = state["theta"].to(self.theta.device)
        self.updates = state["updates"]

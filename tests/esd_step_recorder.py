"""Records what an ESD family step (methods/esd_sdxl.SDXLSteps, methods/esd_flux.FluxSteps) drew, rolled out
and computed on its last training step, for the equivalence tests of tests/test_fidelity_families.py and
tests/test_esd_flux.py."""


def record_esd_steps(monkeypatch, steps_cls) -> dict:
    """Patch `steps_cls.rollout` and TrainingSession.step; the returned dict holds, for the latest step, the
    noise, stop, trained parameters before the step (theta), rolled-out latent (z), loss and gradients."""
    from eraselab.methods.training import TrainingSession

    seen = {}
    real_rollout, real_step = steps_cls.rollout, TrainingSession.step

    def rollout(self, session, noise, cond, stop, cfg):
        params = dict(session.unet.named_parameters())
        theta = {n: params[n].detach().clone() for n in session.names}
        seen.update(noise=noise.clone(), stop=stop, theta=theta)
        seen["z"] = real_rollout(self, session, noise, cond, stop, cfg)
        return seen["z"]

    def step(self, loss):
        value = real_step(self, loss)
        seen["loss"] = value
        seen["grads"] = {n: p.grad.clone() for n, p in zip(self.names, self.trained)}
        return value

    monkeypatch.setattr(steps_cls, "rollout", rollout)
    monkeypatch.setattr(TrainingSession, "step", step)
    return seen

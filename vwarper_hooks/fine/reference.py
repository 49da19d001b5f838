"""The reference branch (paper 4.2): the reference image, repeated over time, inverted in step with
the generation, and run through the transformer where its features are needed.

`ReferenceBranch.prepare` builds the branch's state once per pipeline call: the subject prompt's
text conditioning, the image's VAE latent, and its inversion over the pipeline's own timesteps
(`trajectory[i]` is the reference latent at ``timesteps[i]``). The state is a pure function of
subject, image, size, timesteps and model, so it is cached on the `Subject` (see
`reference_cache`). `ReferenceBranch.run` then runs one reference forward at a step, through the
layers the plan needs and no further.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..adapter import Adapter
from ..files import tensor_digest
from ..images import image_to_video
from .capture import Branch, Route, Router, StopReference
from .inversion import invert_reference
from .reference_cache import ReferenceState, cache_key
from .steps import StepClock

logger = logging.getLogger(__name__)


class ReferenceBranch:
    """The reference branch of one session."""

    def __init__(self, pipe: Any, adapter: Adapter, subject: Any, router: Router, clock: StepClock) -> None:
        self.pipe, self.adapter, self.subject, self.router, self.clock = pipe, adapter, subject, router, clock
        self.state: ReferenceState | None = None

    def prepare(self, kwargs: dict, latents: torch.Tensor) -> None:
        """This run's state: from the subject's cache, or made now (text, latent, inversion)."""
        config = self.router.run.config
        prompt = config.inversion_prompt or self.subject.prompt
        image = self.subject.images[0]
        key = cache_key(image, prompt, self.clock.host_timesteps(), kwargs, self.pipe.transformer,
                        extra=self._key_extra(kwargs, config.inversion_refine))
        self.state = self.subject.reference_cache.get_or_make(
            key, lambda: self._make(kwargs, latents, prompt, image, config.inversion_refine)
        )

    def _key_extra(self, kwargs: dict, refine: int) -> tuple:
        """What else the state depends on: the refinement count, per-sample conditioning values
        (e.g. HunyuanVideo's guidance: one host read per run; meta tensors have no values) and the
        attention kwargs."""
        conditioning = tuple(
            (name, "meta" if kwargs[name].is_meta else tensor_digest(kwargs[name]))
            for name in self.adapter.batched_kwargs
            if torch.is_tensor(kwargs.get(name))
        )
        return refine, conditioning, repr(kwargs.get("attention_kwargs"))

    def _make(self, kwargs: dict, latents: torch.Tensor, prompt: str, image: Any, refine: int) -> ReferenceState:
        pipe, adapter = self.pipe, self.adapter
        frames, height, width = adapter.video_shape(pipe, latents)
        with self.router.routing(Route(branch=Branch.INTERNAL)):
            text = adapter.encode_text(pipe, prompt, kwargs)
            video = image_to_video(image, frames, height, width)
            clean = adapter.encode_video(pipe, video).to(latents.dtype)

            def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                ref = adapter.reference_kwargs(kwargs, x, text, t.to(latents.device).expand(x.shape[0]))
                return pipe.transformer(**ref)[0]

            scheduler = self.clock.host_scheduler()
            logger.info("inverting the reference over %d steps", len(scheduler.timesteps))
            with pipe.progress_bar(total=len(scheduler.timesteps)) as bar:
                trajectory = invert_reference(scheduler, denoise, clean, refine=refine, progress=lambda _: bar.update())
        return ReferenceState(text=text, clean=clean, trajectory=trajectory)

    def run(self, step: int, kwargs: dict, layers: frozenset[int]) -> None:
        """One reference forward at `step` through the deepest of `layers` (the router captures)."""
        timestep = self.adapter.timestep(kwargs).reshape(-1)[:1]
        ref_kwargs = self.adapter.reference_kwargs(kwargs, self.state.latents_at(step), self.state.text, timestep)
        route = Route(branch=Branch.REFERENCE, step=step, layers=layers, deepest=max(layers))
        with self.router.routing(route):
            try:
                self.pipe.transformer(**ref_kwargs)
            except StopReference:
                pass

    def close(self) -> None:
        self.state = None

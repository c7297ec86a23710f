"""Diffusion priors for score distillation (StableDreamer, ../shared/notes/stabledreamer.md):
the SDS algebra (`sds`) and noise-level schedules (`schedules`)."""

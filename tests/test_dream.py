"""`recon dream` (StableDreamer) offline on a CPU: tiny random diffusers models loaded through the
production path, the conventions of each prior (VAE scaling, v-prediction, IF's 6 channels), the
embedding cache, view prompts, the exact-noise oracle rebuilding a known object (and pushed away
when the prompts are swapped), exact resume across the stage switch, and a two-stage CLI run."""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from types import SimpleNamespace

import imageio.v3 as iio
import pytest
import torch

from dream_targets import snowman
from recon.cli import main
from recon.export import read_ply
from recon.guidance.distillation import GuidanceSettings, score_distillation
from recon.guidance.oracle import OraclePrior
from recon.guidance.priors import DeepFloydIFGuidance, StableDiffusionGuidance, ViewBatch, model_directory
from recon.guidance.prompts import view_names, view_prompt
from recon.guidance.sds import add_noise, v_to_epsilon
from recon.methods.dreamer import PRESETS, Dreamer, orbit_scene, sphere_cameras
from recon.metrics import psnr
from tiny_diffusion import tiny_deepfloyd_if, tiny_stable_diffusion
from training import logged_values, run_training


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return SimpleNamespace(sd=tiny_stable_diffusion(root / "sd"), sd_v=tiny_stable_diffusion(root / "sd-v", "v_prediction"), deepfloyd=tiny_deepfloyd_if(root / "if"))


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return snowman(tmp_path_factory.mktemp("target") / "snowman.ply")


@pytest.fixture(autouse=True)
def _embedding_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECON_CACHE", str(tmp_path / "cache"))


def oracle_config(target, **changes):
    """The fast preset on the oracle at 64², small enough for a test."""
    base = dict(prompt="a snowman", oracle=str(target), stage="1", max_steps=200, init_num_random=1000, eval_resolution=64,
                eval_cameras=4, eval_every=10**6, checkpoint_every=10**6, log_every=10, debug_every=10**6, refine_start=50, refine_stop=150, refine_every=50)
    return replace(PRESETS["fast"], **{**base, **changes})


def orbit_psnr(method: Dreamer) -> float:
    scene = method.scene
    values = [float(psnr(method.render_view(scene.K[i], scene.c2w[i], scene.width, scene.height)["rgb"].cpu(), scene.images[i])) for i in range(scene.num_views)]
    return sum(values) / len(values)


# ---- the diffusers priors ---------------------------------------------------------------------
def test_stable_diffusion_prior_loads_offline_and_keeps_the_vae_and_v_conventions(models):
    g = torch.Generator().manual_seed(0)
    prior = StableDiffusionGuidance(models.sd, "cpu", generator=g)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and prior.space == "latent" and prior.resolution == 64 and prior.prediction_type == "epsilon"
    images = torch.rand(2, 3, 64, 64)
    latents = prior.encode(images)
    g.manual_seed(0)
    posterior = prior.vae.encode(images * 2 - 1).latent_dist  # input in [−1, 1], output × scaling_factor
    expected = (posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(0))) * prior.vae.config.scaling_factor
    torch.testing.assert_close(latents, expected)
    decoded = prior.decode(latents)
    assert decoded.shape == (2, 3, 64, 64) and 0 <= decoded.min() and decoded.max() <= 1
    embeddings = prior.text_embeddings(["a snowman", ""])
    assert embeddings.shape == (2, 77, 8)
    t = torch.tensor([100, 700])
    x_t = add_noise(latents.detach(), torch.randn_like(latents), prior.alphas_cumprod[t])
    torch.testing.assert_close(prior.predict_noise(x_t, t, embeddings, None), prior.unet(x_t, t, encoder_hidden_states=embeddings).sample)

    sliced = StableDiffusionGuidance(models.sd, "cpu", attention_slicing=True)  # same numbers, attention in slices
    torch.testing.assert_close(sliced.predict_noise(x_t, t, embeddings, None), prior.predict_noise(x_t, t, embeddings, None), atol=1e-5, rtol=1e-4)

    v_prior = StableDiffusionGuidance(models.sd_v, "cpu")
    assert v_prior.prediction_type == "v_prediction"
    v = v_prior.unet(x_t, t, encoder_hidden_states=embeddings).sample
    torch.testing.assert_close(v_prior.predict_noise(x_t, t, embeddings, None), v_to_epsilon(v, x_t, v_prior.alphas_cumprod[t]))


def test_deepfloyd_if_prior_works_in_pixels_and_takes_the_first_three_of_six_channels(models):
    prior = DeepFloydIFGuidance(models.deepfloyd, "cpu")
    assert prior.space == "pixel" and prior.resolution == 32 and prior.unet.config.out_channels == 6
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(prior.encode(images), images * 2 - 1)
    torch.testing.assert_close(prior.decode(prior.encode(images)), images)
    embeddings = prior.text_embeddings(["a snowman, front view", ""])  # T5 with its attention mask
    assert embeddings.shape == (2, 77, 32) and not torch.allclose(embeddings[0], embeddings[1])
    t = torch.tensor([50, 900])
    x_t = torch.randn(2, 3, 32, 32)
    out = prior.unet(x_t, t, encoder_hidden_states=embeddings).sample  # [2, 6, 32, 32]: ε, variance
    torch.testing.assert_close(prior.predict_noise(x_t, t, embeddings, None), out[:, :3])


def test_the_image_space_target_of_a_latent_prior_is_the_decoded_x0(models):
    prior = StableDiffusionGuidance(models.sd, "cpu", generator=torch.Generator().manual_seed(0))
    embeddings = prior.text_embeddings(["", "a snowman"])
    renders = torch.rand(2, 64, 64, 3, requires_grad=True)  # at the prior's resolution: `prepare` only transposes
    settings = GuidanceSettings(scale=7.5, loss_space="image")
    result = score_distillation(prior, renders, embeddings[1:].expand(2, -1, -1), embeddings[:1].expand(2, -1, -1), (20, 980), None, settings, torch.Generator().manual_seed(1), debug=True)
    result.loss.backward()
    ab = prior.alphas_cumprod[result.t].view(-1, 1, 1, 1)
    lam = (ab * (1 - ab)).sqrt()  # DreamFusion's w = 1 − ā as an L2 weight: a·s
    expected = lam * (renders.detach().permute(0, 3, 1, 2) - result.x0) / 2
    torch.testing.assert_close(renders.grad, expected.permute(0, 2, 3, 1), atol=1e-6, rtol=1e-5)


def test_stages_resolution_ramp_and_clip_schedule(target):
    config = oracle_config(target, stage="both", max_steps=100, stage1_steps=40, stage2_resolution=128, stage2_resolution_start=64,
                           resolution_ramp=0.5, grad_clip_start=0.5, grad_clip_end=2.0)
    method = Dreamer(config, orbit_scene(config), device="cpu")
    assert [method.stage_at(s) for s in (0, 39, 40, 99)] == [1, 1, 2, 2]
    assert [method.stage_progress(s) for s in (10, 40, 70)] == [(10, 40), (0, 60), (30, 60)]
    assert [method.resolution_at(s) for s in (0, 39, 40, 55, 70, 99)] == [64, 64, 64, 96, 128, 128]  # ramp over half of stage 2
    assert [method.grad_clip_at(s) for s in (0, 50, 100)] == [0.5, 1.25, 2.0]
    alone = Dreamer(replace(config, stage="2"), orbit_scene(config), device="cpu")
    assert alone.stage_at(0) == 2 and alone.stage_progress(30) == (30, 100)


def test_densification_stops_growing_at_max_gaussians(target):
    def final_count(cap):
        config = oracle_config(target, max_steps=61, refine_start=20, refine_every=20, refine_stop=100, max_gaussians=cap)  # refines at 40, 60
        method = Dreamer(config, orbit_scene(config), device="cpu")
        for step in range(config.max_steps):
            method.train_step(step)
        return method.num_gaussians

    assert final_count(10**6) > 3000  # SDS gradients pass the threshold almost everywhere: 1000 → 2000 → 4000
    assert 1500 <= final_count(1500) <= 2000  # grown once (past the cap), then only pruned


def test_a_run_can_start_from_a_ply_with_its_colours_at_sh_degree_0(target):
    config = oracle_config(target, init="ply", init_ply=str(target))
    method = Dreamer(config, orbit_scene(config), device="cpu")
    assert method.num_gaussians == read_ply(target)["means"].shape[0] and method.params["shN"].shape[1] == 0
    assert orbit_psnr(method) > 40  # the oracle's own object, rendered on the orbit


def test_model_folders_are_checked_with_errors_naming_the_path(models, tmp_path):
    with pytest.raises(ValueError, match=r"nowhere: no Stable Diffusion model there \(does not exist\).*huggingface-cli download"):
        model_directory(tmp_path / "nowhere", "sd")
    with pytest.raises(ValueError, match=r"no DeepFloyd IF stage I model there \(lacks unet/config.json.*licence"):
        model_directory(tmp_path, "if")
    broken = tmp_path / "sample-model"
    for name in ("unet", "scheduler", "tokenizer", "text_encoder", "vae"):
        (broken / name).mkdir(parents=True)
        (broken / name / ("scheduler_config.json" if name == "scheduler" else "config.json")).write_text(json.dumps({"prediction_type": "sample"}))
    with pytest.raises(ValueError, match=r"scheduler_config.json: prediction_type 'sample' is not supported"):
        model_directory(broken, "sd")
    assert model_directory(models.sd, "sd") == models.sd


def test_embeddings_are_cached_per_model_and_prompt_and_the_text_encoder_is_not_rebuilt(models, monkeypatch):
    import transformers

    built = []
    original = transformers.CLIPTextModel.from_pretrained
    monkeypatch.setattr(transformers.CLIPTextModel, "from_pretrained", lambda *a, **k: built.append(1) or original(*a, **k))
    first = StableDiffusionGuidance(models.sd, "cpu").text_embeddings(["a snowman", ""])
    assert len(built) == 1
    second = StableDiffusionGuidance(models.sd, "cpu").text_embeddings(["", "a snowman"])  # a new process would see the same files
    assert len(built) == 1
    torch.testing.assert_close(second, first.flip(0))
    StableDiffusionGuidance(models.sd, "cpu").text_embeddings(["a snowman", "a teapot"])  # only the new prompt is encoded
    assert len(built) == 2
    assert StableDiffusionGuidance(models.sd_v, "cpu").text_embeddings(["a snowman"]).shape == (1, 77, 8) and len(built) == 3  # another model


def test_view_prompts_follow_azimuth_and_elevation():
    azimuth = torch.tensor([0.0, 44.0, 46.0, 90.0, 134.0, 136.0, 180.0, -170.0, -90.0, 360.0, 0.0])
    elevation = torch.tensor([0.0] * 10 + [61.0])
    assert view_names(azimuth, elevation) == ["front", "front", "side", "side", "side", "back", "back", "back", "side", "front", "overhead"]
    assert view_prompt("a corgi", "back") == "a corgi, back view"


# ---- the oracle -------------------------------------------------------------------------------
def test_the_oracle_denoises_to_its_target_and_its_sds_gradient_is_the_l2_gradient(target):
    prior = OraclePrior(target, "cpu", 32)
    K, c2w = sphere_cameras(torch.tensor([0.0, 120.0]), torch.tensor([10.0, 30.0]), torch.full((2,), 2.5), torch.full((2,), 50.0), 32)
    white = torch.ones(2, 32, 32, 3)
    views = ViewBatch(K, c2w, 32, 32, white)
    x_star = prior.encode(prior.prepare(prior.render_target(views)))  # [2, 3, 32, 32]
    t = torch.tensor([300, 900])
    x_t = torch.randn(2, 3, 32, 32)
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    cond, uncond = prior.text_embeddings(["a snowman", "a snowman"]), prior.text_embeddings(["", ""])
    torch.testing.assert_close((x_t - (1 - ab).sqrt() * prior.predict_noise(x_t, t, cond, views)) / ab.sqrt(), x_star, atol=1e-4, rtol=1e-4)
    near_target = add_noise(x_star, torch.randn(2, 3, 32, 32) * 0.01, prior.alphas_cumprod[torch.tensor([20, 20])])
    x0_uncond = (near_target - (1 - prior.alphas_cumprod[20]).sqrt() * prior.predict_noise(near_target, torch.tensor([20, 20]), uncond, views)) / prior.alphas_cumprod[20].sqrt()
    torch.testing.assert_close(x0_uncond, x_star, atol=1e-3, rtol=1e-3)  # the mixture's posterior picks the nearby delta

    renders = torch.rand(2, 32, 32, 3, requires_grad=True)
    result = score_distillation(prior, renders, cond, uncond, (100, 900), views, GuidanceSettings(scale=1.0, weighting="l2"), torch.Generator().manual_seed(0))
    result.loss.backward()
    x = renders.detach().permute(0, 3, 1, 2) * 2 - 1
    expected = (2 * (x - x_star) / 2).permute(0, 2, 3, 1)  # λ = 1, d(2r − 1)/dr = 2, reparameterised 1/B with B = 2
    torch.testing.assert_close(renders.grad, expected, atol=1e-4, rtol=1e-4)


def test_dreaming_on_the_oracle_rebuilds_the_object_and_swapped_prompts_push_away(target, tmp_path):
    normal = Dreamer(oracle_config(target), orbit_scene(oracle_config(target)), device="cpu")
    before = orbit_psnr(normal)
    run_training(normal, tmp_path / "normal")
    after = orbit_psnr(normal)
    assert after > 30.0 and after > before + 15, (before, after)
    records = [r for r in logged_values(tmp_path / "normal") if "t_max" in r]
    assert records[0]["t_max"] > records[-1]["t_max"] >= 490  # stage 1 anneals t_max 0.98 → 0.5

    swapped_config = oracle_config(target, prompt="", negative_prompt="a snowman", stage1_guidance_scale=3.0, max_steps=100)
    swapped = Dreamer(swapped_config, orbit_scene(swapped_config), device="cpu")
    swapped.scene.images = normal.scene.images
    before = orbit_psnr(swapped)
    run_training(swapped, tmp_path / "swapped")
    assert orbit_psnr(swapped) < before - 1, (before, orbit_psnr(swapped))


def test_resume_is_exact_across_the_stage_switch_and_a_densification(target, tmp_path):
    config = oracle_config(target, stage="both", max_steps=60, stage1_steps=30, stage2_resolution=48, stage2_resolution_start=32,
                           refine_start=10, refine_every=10, refine_stop=50, checkpoint_every=25, background="learned", debug_every=20)

    def run(run_dir, crash_at=None, resume=False):
        return run_training(Dreamer(config, orbit_scene(config), device="cpu"), run_dir, resume=resume, crash_at=crash_at)

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crash_at=35)  # densified at 20, checkpoint at 25, stage 2 from 30, densified at 30 and 40
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.num_gaussians == straight.num_gaussians != config.init_num_random
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    assert logged_values(tmp_path / "a") == logged_values(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "a" / "debug").glob("*.png")) == ["step_0000020.png", "step_0000040.png", "step_0000060.png"]


# ---- end to end through the CLI -------------------------------------------------------------
def test_two_stages_through_the_cli_with_tiny_if_and_sd(models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["dream", "a snowman", "--if", models.deepfloyd, "--sd", models.sd, "--preset", "fast", "--max-steps", 8, "--quiet", "--frames", 4,
            "--set", "stage1_steps=4", "--set", "debug_every=4", "--set", "log_every=1", "--set", "stage2_resolution=96", "--set", "eval_resolution=48"]
    assert main([str(a) for a in [*args, "--out", out]]) == 0
    printed = capsys.readouterr().out
    assert "CLIP score n/a: no CLIP weights" in printed
    records = [r for r in logged_values(out) if "stage" in r]
    assert [r["stage"] for r in records] == [1] * 4 + [2] * 4 and all(math.isfinite(r["loss"]) for r in records)
    assert [r["resolution"] for r in records][:4] == [64] * 4 and records[-1]["resolution"] == 96
    grid = iio.imread(out / "debug" / "step_0000004.png")  # IF stage: 2 views × 32², render | noisy | x̂₀
    assert grid.shape == (2 * 32, 3 * 32, 3)
    assert iio.imread(out / "debug" / "step_0000008.png").shape == (2 * 64, 3 * 64, 3)  # SD stage: the VAE's 64²
    steps = [json.loads(line) for line in (out / "debug" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [4, 8] and all(len(s["t"]) == 2 for s in steps)
    assert read_ply(out / "export" / "point_cloud.ply")["means"].shape[0] > 0 and (out / "render" / "orbit.mp4").stat().st_size > 0
    assert json.loads((out / "eval" / "clip.json").read_text())["clip_score"] is None

    assert main(["eval", str(out)]) == 2 and "no ground truth to score unless it dreamed on an --oracle" in capsys.readouterr().err

    import transformers  # a second run finds every prompt's embedding on disk

    for encoder in (transformers.CLIPTextModel, transformers.T5EncoderModel):
        monkeypatch.setattr(encoder, "from_pretrained", lambda *a, **k: pytest.fail("a text encoder was built"))
    assert main([str(a) for a in [*args, "--max-steps", 2, "--set", "stage1_steps=1", "--out", tmp_path / "again"]]) == 0


def test_the_viewer_shows_the_latest_debug_grid_and_the_stage(target, tmp_path):
    from recon.trainer import Trainer
    from test_viewer import free_port
    from viewer import Viewer

    config = oracle_config(target, max_steps=20, debug_every=10)
    method = Dreamer(config, orbit_scene(config), device="cpu")
    viewer = Viewer(method, port=free_port())
    try:
        Trainer(method, tmp_path / "run", {}).run(quiet=True, viewer=viewer)
        viewer._update_debug_image()  # what the render thread does every second
        assert viewer.debug_image.visible and viewer.debug_image.image.shape == (2 * 64, 3 * 64, 3)
        shown = viewer.debug_image.image.astype(int)
        assert abs(shown - (method.debug_image.numpy() * 255).round()).max() <= 1
        assert (tmp_path / "run" / "debug" / "step_0000020.png").is_file()
        assert "stage 1" in viewer._stats_text() and "t [" in viewer._stats_text()
    finally:
        viewer.close()


def test_an_oracle_run_through_the_cli_is_scored_by_recon_eval(target, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["dream", "a snowman", "--oracle", str(target), "--preset", "fast", "--stage", "1", "--max-steps", "30", "--quiet", "--frames", "2",
                 "--set", "eval_resolution=48", "--set", "eval_cameras=3", "--out", str(out)]) == 0
    assert main(["dream", "--resume", "--out", str(out), "--max-steps", "40", "--quiet", "--frames", "2"]) == 0  # its own prompt and oracle
    assert [r["step"] for r in logged_values(out) if "loss" in r][-1] == 40
    assert main(["eval", str(out)]) == 0
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["num_views"] == 3 and 12 < results["mean"]["psnr"] < 60
    assert json.loads((out / "config.json").read_text())["config"]["oracle"] == str(target.resolve())

"""InContextPipeline: the official pipeline vector, seeding, video queries, precision guards, model files."""

import json
import warnings

import pytest
import torch

from lavinkit.flow import HeunSampler
from lavinkit.pipeline import InContextPipeline, PipelineOutput, load_model_file, to_uint8
from tests.conftest import PARITY, load_parity

TOL = dict(atol=2e-4, rtol=1e-4)


def _kwargs(name):
    return json.loads((PARITY / "manifest.json").read_text())["files"][name]["constructor_kwargs"]


@pytest.fixture(scope="module")
def parity_models():
    from lavinkit.interop.jdit_official import jdit_from_official
    from lavinkit.interop.stvae_official import stvae_from_official

    vae = stvae_from_official(load_parity("vae_weights"), **_kwargs("vae_weights.safetensors"))
    dit = jdit_from_official(load_parity("jdit_weights"), **_kwargs("jdit_weights.safetensors"))
    return vae, dit


@pytest.fixture(scope="module")
def tiny_models():
    from lavinkit.models.jdit import JDiT, JDiTConfig
    from lavinkit.models.stvae import STVAE, STVAEConfig

    torch.manual_seed(0)
    vae = STVAE(STVAEConfig.from_name("tiny", latent_channels=8, latent_shift=0.1, latent_scale=0.7))
    dit = JDiT(JDiTConfig.from_name("tiny", in_channels=8))
    dit.init_weights()
    for p in dit.final.parameters():  # the zero-initialised final layer would make every velocity 0
        torch.nn.init.normal_(p, std=0.05)
    return vae.eval(), dit.eval()


def _frames_to_pairs(frames):
    """[1, 3, 2N+1, H, W] official frame stack -> query + (input, target) pairs of [1, 3, 1, H, W]."""
    clips = [frames[:, :, i : i + 1] for i in range(frames.shape[2])]
    return clips[-1], [(clips[i], clips[i + 1]) for i in range(0, len(clips) - 1, 2)]


def test_pipeline_parity_vector(parity_models):
    ref = load_parity("pipeline")
    vae, dit = parity_models
    pipe = InContextPipeline(vae, dit, num_steps=20, grid="official", guidance_scale=1.5, guidance_mode="batched",
                             device="cpu", dtype=torch.float32)
    query, pairs = _frames_to_pairs(ref["frames"])
    eps = ref["posterior_eps"].permute(2, 1, 0, 3, 4)  # [2N+1, C, 1, h, w] -> context layout [1, C, 2N+1, h, w]
    out = pipe(query, pairs, noise=ref["x_init"], posterior_eps=eps, output="uint8", rounding="truncate")
    assert isinstance(out, PipelineOutput) and out.nfe == 19
    torch.testing.assert_close(out.context, ref["cond"], **TOL)
    torch.testing.assert_close(out.latent, ref["latent"], **TOL)
    torch.testing.assert_close(out.decoded, ref["decoded"], **TOL)
    assert out.images.dtype == torch.uint8 and out.images.shape == ref["image_uint8"].shape
    assert (out.images.int() - ref["image_uint8"].int()).abs().max() <= 1
    torch.testing.assert_close(to_uint8(out.decoded / 2 + 0.5, "truncate"), out.images)
    torch.testing.assert_close((out.decoded / 2 + 0.5).clamp(0, 1), ref["image"], **TOL)  # output="float"


def test_pipeline_normalises_with_the_vae_stats(parity_models):
    ref = load_parity("pipeline")
    vae, dit = parity_models
    query, pairs = _frames_to_pairs(ref["frames"])
    pipe = InContextPipeline(vae, dit, device="cpu", encode_mode="mean")
    out = pipe(query, pairs, noise=ref["x_init"])
    mean = ref["posterior_mean"].permute(2, 1, 0, 3, 4)
    torch.testing.assert_close(out.context, vae.normalize_latents(mean), **TOL)


def _image_inputs(batch=1, pairs=2, size=(32, 48), seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda: torch.rand(batch, 3, 1, *size, generator=g) * 2 - 1  # noqa: E731
    return rand(), [(rand(), rand()) for _ in range(pairs)]


def test_seed_determinism_and_shapes(tiny_models):
    vae, dit = tiny_models
    pipe = InContextPipeline(vae, dit, num_steps=5, grid="uniform", device="cpu")
    query, pairs = _image_inputs(batch=2)
    a, b, c = pipe(query, pairs, seed=3), pipe(query, pairs, seed=3), pipe(query, pairs, seed=4)
    assert a.images.shape == (2, 3, 1, 32, 48) and a.context.shape == (2, 8, 5, 4, 6)
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.nfe == 4
    # pairs given with batch 1 broadcast over the query batch; zero pairs = query-only context
    one = pipe(query, [(p[0][:1], p[1][:1]) for p in pairs], seed=3)
    assert one.context.shape == (2, 8, 5, 4, 6)
    assert pipe(query, [], seed=3).context.shape == (2, 8, 1, 4, 6)


def test_batched_guidance_matches_two_pass_end_to_end(tiny_models):
    vae, dit = tiny_models
    query, pairs = _image_inputs()
    outs = [InContextPipeline(vae, dit, num_steps=5, grid="uniform", device="cpu", guidance_mode=m)(query, pairs, seed=1)
            for m in ("batched", "two_pass", "auto")]
    torch.testing.assert_close(outs[0].latent, outs[1].latent, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outs[2].latent, outs[1].latent, atol=1e-4, rtol=1e-4)


def test_ensemble_averages_independent_answers(tiny_models):
    """ensemble_size K: the latent is the mean of the K answers from the K noises (member k of query b at k * B + b),
    decoded once; member 0 is what a single-sample pipeline answers with the same seed."""
    vae, dit = tiny_models
    kwargs = dict(num_steps=5, grid="uniform", device="cpu", encode_mode="mean")
    single, ensemble = InContextPipeline(vae, dit, **kwargs), InContextPipeline(vae, dit, ensemble_size=3, **kwargs)
    query, pairs = _image_inputs(batch=2)
    noise = torch.randn(3 * 2, 8, 1, 4, 6, generator=torch.Generator().manual_seed(5))
    out = ensemble(query, pairs, noise=noise)
    members = [single(query, pairs, noise=noise[2 * k : 2 * (k + 1)]).latent for k in range(3)]
    torch.testing.assert_close(out.latent, torch.stack(members).mean(0), atol=1e-5, rtol=1e-5)
    assert out.latent.shape == (2, 8, 1, 4, 6) and out.images.shape == (2, 3, 1, 32, 48)
    torch.testing.assert_close(out.decoded, single.decode(out.latent))
    assert not torch.allclose(members[0], members[1])  # the members differ: the mean is not one of them
    seeded = torch.randn(3 * 2, 8, 1, 4, 6, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(single(query, pairs, seed=7).latent, single(query, pairs, noise=seeded[:2]).latent)
    torch.testing.assert_close(ensemble(query, pairs, seed=7).latent, ensemble(query, pairs, noise=seeded).latent)
    with pytest.raises(ValueError, match=r"x ensemble_size 3"):
        ensemble(query, pairs, noise=noise[:2])
    with pytest.raises(ValueError, match="ensemble_size must be an integer >= 1"):
        InContextPipeline(vae, dit, ensemble_size=0, device="cpu")


def test_residual_transfer_gain_is_fitted_on_the_pairs(tiny_models):
    """residual_transfer adds g * (query - decode(encode(query))) to the decoded answer, g [B, 3] the least-squares
    fit of the example targets' ST-VAE residuals on their inputs' residuals, clamped to [-1, 1]."""
    vae, _ = tiny_models
    from lavinkit.models.jdit import JDiT, JDiTConfig

    kwargs = dict(num_steps=3, grid="uniform", device="cpu", encode_mode="mean")
    query, pairs = _image_inputs(batch=2, size=(32, 32))
    pairs[1] = (pairs[1][0], pairs[1][0] * 0.5 - 0.2)  # a target that keeps part of its input's detail
    dit = JDiT(JDiTConfig.from_name("tiny", in_channels=8))
    dit.init_weights()
    for p in dit.final.parameters():
        torch.nn.init.normal_(p, std=0.05)
    plain = InContextPipeline(vae, dit, **kwargs)
    transfer = InContextPipeline(vae, dit, residual_transfer=True, **kwargs)
    out, base = transfer(query, pairs, seed=3), plain(query, pairs, seed=3)
    residual = lambda x: x - plain.decode(plain.encode([x]))  # noqa: E731
    # reference: per query and channel, lstsq of the stacked target residuals on the stacked input residuals
    r_in = torch.cat([residual(i).flatten(2) for i, _ in pairs], dim=2)  # [B, 3, N]
    r_tgt = torch.cat([residual(t).flatten(2) for _, t in pairs], dim=2)
    expected = torch.linalg.lstsq(r_in[..., None], r_tgt[..., None]).solution[..., 0, 0].clamp(-1, 1)
    torch.testing.assert_close(out.residual_gain, expected, atol=1e-4, rtol=1e-4)
    assert base.residual_gain is None and out.residual_gain.shape == (2, 3)
    gain = out.residual_gain[:, :, None, None, None]
    torch.testing.assert_close(out.latent, base.latent)
    torch.testing.assert_close(out.decoded, base.decoded + gain * residual(query), atol=1e-5, rtol=1e-5)

    # pairs that keep their input (targets = inputs) transfer the whole residual: a query-residual J-DiT that answers
    # with the query's latent (untrained: zero output layer) then returns the query itself, not the VAE's rendering
    keeper = JDiT(JDiTConfig.from_name("tiny", in_channels=8, query_residual=True))
    keeper.init_weights()
    identity_pairs = [(i, i) for i, _ in pairs]
    out = InContextPipeline(vae, keeper, residual_transfer=True, **kwargs)(query, identity_pairs, seed=0)
    torch.testing.assert_close(out.residual_gain, torch.ones(2, 3))
    torch.testing.assert_close(out.decoded, query, atol=1e-4, rtol=1e-4)
    rendered = InContextPipeline(vae, keeper, **kwargs)(query, identity_pairs, seed=0).decoded
    assert (rendered - query).abs().mean() > 0.1
    # "heun" for such a J-DiT ends with an Euler step (its velocity is not defined at t = 1) and lands on the query
    heun = InContextPipeline(vae, keeper, residual_transfer=True, **dict(kwargs, sampler="heun"))
    assert heun.sampler.final_step == "euler"
    torch.testing.assert_close(heun(query, identity_pairs, seed=0).decoded, query, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="query_residual"):
        InContextPipeline(vae, keeper, **dict(kwargs, sampler=HeunSampler(3, "uniform")))
    # the same for clips: each 5-frame clip is decoded from its own 2 latent frames
    g = torch.Generator().manual_seed(1)
    clips = [torch.rand(1, 3, 5, 32, 32, generator=g) * 2 - 1 for _ in range(2)]
    out = InContextPipeline(vae, keeper, residual_transfer=True, **kwargs)(clips[0], [(clips[1], clips[1])], seed=0)
    torch.testing.assert_close(out.decoded, clips[0], atol=1e-4, rtol=1e-4)

    with pytest.raises(ValueError, match="residual_transfer fits its gain on the example pairs"):
        transfer(query, [], seed=0)
    with pytest.raises(ValueError, match=r"context_pairs\[1\]: residual_transfer needs input and target of one"):
        transfer(query, [pairs[0], (pairs[1][0], pairs[1][1][:1].expand(2, 3, 5, 32, 32))], seed=0)


def test_video_query_encodes_whole_clips(tiny_models):
    vae, dit = tiny_models
    g = torch.Generator().manual_seed(0)
    clip = lambda: torch.rand(1, 3, 5, 32, 32, generator=g) * 2 - 1  # noqa: E731
    query, pairs = clip(), [(clip(), clip())]
    pipe = InContextPipeline(vae, dit, num_steps=4, grid="uniform", device="cpu", encode_mode="mean")
    out = pipe(query, pairs, seed=0)
    assert out.latent.shape == (1, 8, 2, 4, 4) and out.context.shape == (1, 8, 6, 4, 4)
    assert out.images.shape == (1, 3, 5, 32, 32)
    whole = vae.normalize_latents(vae.encode(query).mean)
    torch.testing.assert_close(out.context[:, :, -2:], whole, atol=1e-5, rtol=1e-5)


def test_input_errors(tiny_models):
    vae, dit = tiny_models
    pipe = InContextPipeline(vae, dit, num_steps=4, grid="uniform", device="cpu")
    query, pairs = _image_inputs()
    with pytest.raises(ValueError, match="query: .*multiples of 16"):
        pipe(torch.zeros(1, 3, 1, 30, 32), [])
    with pytest.raises(ValueError, match=r"context_pairs\[1\] input"):
        pipe(query, [pairs[0], (torch.zeros(1, 3, 32, 48), pairs[1][1])])
    with pytest.raises(ValueError, match="noise must have shape"):
        pipe(query, pairs, noise=torch.zeros(1, 8, 1, 4, 4))
    with pytest.raises(ValueError, match="posterior_eps"):
        pipe(query, pairs, posterior_eps=torch.zeros(1, 8, 4, 4, 6))


def test_fp16_refused_for_bf16_weights(tiny_models):
    vae, dit = tiny_models
    with pytest.raises(ValueError, match="bfloat16"):
        InContextPipeline(vae, dit, device="cpu", dtype=torch.float16, weights_dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="bfloat16"):
        InContextPipeline(vae, dit, device="cpu", decode_dtype=torch.float16, weights_dtype=torch.bfloat16,
                          allow_fp16=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InContextPipeline(vae, dit, device="cpu", dtype=torch.float16, weights_dtype=torch.float32)
    vae.float(), dit.float()


def test_separate_encode_decode_dtypes(tiny_models):
    vae, dit = tiny_models
    pipe = InContextPipeline(vae, dit, num_steps=4, grid="uniform", device="cpu", encode_dtype=torch.float32,
                             decode_dtype=torch.bfloat16)
    query, pairs = _image_inputs()
    out = pipe(query, pairs, seed=0)
    assert out.decoded.dtype == torch.float32 and torch.isfinite(out.decoded).all()
    vae.float()


def test_from_checkpoints_lavinkit_and_official_files(tiny_models, parity_models, tmp_path):
    vae, dit = tiny_models
    vae.save_pretrained(tmp_path / "vae.safetensors")
    dit.save_pretrained(tmp_path / "dit.safetensors")
    pipe = InContextPipeline.from_checkpoints(tmp_path / "vae.safetensors", tmp_path / "dit.safetensors",
                                              num_steps=4, grid="uniform", device="cpu")
    torch.testing.assert_close(pipe.dit.state_dict(), dit.state_dict())
    torch.testing.assert_close(pipe.vae.state_dict(), vae.state_dict())
    assert pipe.vae.config == vae.config
    # official files go through interop (strict keys)
    from safetensors.torch import save_file

    save_file(load_parity("jdit_weights"), str(tmp_path / "official_dit.safetensors"))
    torch.save({"state_dict": load_parity("vae_weights")}, tmp_path / "stvae.pt")
    off_vae = load_model_file(tmp_path / "stvae.pt", "stvae", official_kwargs=_kwargs("vae_weights.safetensors"))
    off_dit = load_model_file(tmp_path / "official_dit.safetensors", "jdit",
                              official_kwargs=_kwargs("jdit_weights.safetensors"))
    torch.testing.assert_close(off_dit.state_dict(), parity_models[1].state_dict())
    torch.testing.assert_close(off_vae.state_dict(), parity_models[0].state_dict())
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_model_file(tmp_path / "missing.safetensors", "jdit")


def test_default_precision_and_bf16_run(tiny_models):
    vae, dit = tiny_models
    assert InContextPipeline(vae, dit, device="cpu").dtype == torch.float32
    pipe = InContextPipeline(vae, dit, num_steps=3, grid="uniform", device="cpu", dtype=torch.bfloat16)
    assert next(pipe.dit.parameters()).dtype == torch.bfloat16
    query, pairs = _image_inputs(pairs=1)
    out = pipe(query, pairs, seed=0)
    assert out.latent.dtype == torch.float32 and torch.isfinite(out.images).all()
    vae.float(), dit.float()


@pytest.mark.gpu
def test_cuda_defaults_to_bf16_and_matches_cpu_seeding(tiny_models):
    vae, dit = tiny_models
    query, pairs = _image_inputs(pairs=1)
    gpu = InContextPipeline(vae, dit, num_steps=3, grid="uniform", device="cuda")
    assert gpu.dtype == torch.bfloat16
    out = gpu(query, pairs, seed=0)
    cpu = InContextPipeline(vae.float(), dit.float(), num_steps=3, grid="uniform", device="cpu")(query, pairs, seed=0)
    assert out.images.device.type == "cuda"
    assert (out.images.cpu() - cpu.images).abs().mean() < 0.05  # same noise draws (CPU generator), bf16 compute
    vae.float(), dit.float()

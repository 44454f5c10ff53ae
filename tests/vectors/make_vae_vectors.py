"""Makes the VAE decoder's and the PyTorch checkpoints' test vectors (no download).

    python3 tests/vectors/make_vae_vectors.py            # tests/vectors/vae and the tiny DiT .pt files
    python3 tests/vectors/make_vae_vectors.py --full DIR  # the full-width sd-vae files (about 330 MB)

1. `tests/vectors/vae/`: a diffusers `AutoencoderKL` in the sd-vae layout (4 blocks, 2 layers per
   block, 4 latent channels, GroupNorm, mid-block attention) at reduced width (16, 32, 32, 32
   channels, 8 groups) so that the files stay small, with seeded random weights (every norm's
   weight and bias and every bias perturbed too, so none is trivial): `config.json`,
   `diffusion_pytorch_model.safetensors` and the same state dict as `diffusion_pytorch_model.pt`
   (torch.save). `decode.safetensors`: latents `x` (2, 4, 8, 8) as DiT samples them, `images` =
   `vae.decode(x / 0.18215).sample` in float32 (2, 3, 64, 64), and `images.f64` the same in
   float64.
2. `tests/vectors/tiny/weights.pt` (and `weights_f16.pt`, `weights_bf16.pt`): the tiny DiT's
   state dict of `weights.safetensors` saved with torch.save, as an `OrderedDict` whose
   `x_embedder.proj.weight` is an `nn.Parameter` (so `_rebuild_parameter` is exercised) and
   whose `pos_embed` is an offset view into a larger storage.
3. `--full DIR`: the real sd-vae width (128, 256, 512, 512; 32 groups) with random weights, in
   DIR/vae (config.json, diffusion_pytorch_model.safetensors and .pt) and DIR/decode.safetensors
   (latents (1, 4, 32, 32), images (1, 3, 256, 256)): the full-width fidelity test's input.
"""
import argparse
import collections
import json
import os

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
LATENT_SCALE = 0.18215


def make_vae(widths, groups, seed):
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=widths,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=groups,
        sample_size=256,
    )
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return vae.eval()


def save_vae(vae, folder):
    os.makedirs(folder, exist_ok=True)
    vae.save_pretrained(folder, safe_serialization=True)
    state = collections.OrderedDict((k, v.detach().clone().contiguous()) for k, v in vae.state_dict().items())
    torch.save(state, os.path.join(folder, "diffusion_pytorch_model.pt"))


def decode_vectors(vae, latents):
    with torch.no_grad():
        images = vae.decode(latents / LATENT_SCALE).sample
        images64 = vae.double().decode(latents.double() / LATENT_SCALE).sample
        vae.float()
    return {"x": latents.contiguous(), "images": images.contiguous(), "images.f64": images64.contiguous()}


def tiny_dit_checkpoints():
    weights = load_file(os.path.join(HERE, "tiny", "weights.safetensors"))
    for suffix, dtype in (("", torch.float32), ("_f16", torch.float16), ("_bf16", torch.bfloat16)):
        state = collections.OrderedDict()
        for name in sorted(weights):
            tensor = weights[name].to(dtype)
            if name == "x_embedder.proj.weight":
                tensor = torch.nn.Parameter(tensor, requires_grad=False)
            if name == "pos_embed":
                # A view at an offset into a larger storage, as slices of one buffer are saved.
                backing = torch.zeros(tensor.numel() + 10, dtype=dtype)
                backing[7 : 7 + tensor.numel()] = tensor.flatten()
                tensor = backing[7 : 7 + tensor.numel()].view(tensor.shape)
            state[name] = tensor
        torch.save(state, os.path.join(HERE, "tiny", f"weights{suffix}.pt"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", metavar="DIR", help="write the full-width sd-vae files to DIR instead")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.full:
        vae = make_vae([128, 256, 512, 512], 32, seed=1)
        save_vae(vae, os.path.join(args.full, "vae"))
        latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2)) * LATENT_SCALE
        save_file(decode_vectors(vae, latents), os.path.join(args.full, "decode.safetensors"))
        return
    folder = os.path.join(HERE, "vae")
    vae = make_vae([16, 32, 32, 32], 8, seed=0)
    save_vae(vae, folder)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * LATENT_SCALE
    save_file(
        decode_vectors(vae, latents),
        os.path.join(folder, "decode.safetensors"),
        metadata={"note": "diffusers AutoencoderKL.decode(x / 0.18215).sample, random weights, CPU"},
    )
    tiny_dit_checkpoints()


if __name__ == "__main__":
    main()

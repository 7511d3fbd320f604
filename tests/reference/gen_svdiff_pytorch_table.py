#!/usr/bin/python3
"""The spectral-shift parameters svdiff-pytorch's models have for a diffusers model config, as a
table "name dim" (one line each, sorted): tests/cli_svdiff_pytorch.cmake checks a written shift file
against it, key for key and shape for shape.

svdiff-pytorch (svdiff_pytorch/layers.py, diffusers_models/, transformers_models_clip/) builds
UNet2DConditionModelForSVDiff and CLIPTextModelForSVDiff, the diffusers 0.14 / transformers
modules with these layers swapped in, and loads a shift file by setting every key of the file as a
parameter of that model (set_module_tensor_to_device): an unknown key or another shape stops the load.
Its layers hold `delta`, zeros_like(S) of the SVD of the weight flattened to 2-D:
  SVDConv2d [O, I, kh, kw]  -> [min(O, I*kh*kw)]   conv_in/out, resnet conv1/conv2/conv_shortcut,
                                                    down/upsampler conv, proj_in/proj_out (1x1 conv)
  SVDLinear [O, I]          -> [min(O, I)]          time_embedding.linear_1/2, time_emb_proj,
                                                    proj_in/proj_out (use_linear_projection),
                                                    attn1/attn2 to_q/to_k/to_v/to_out.0, ff.net.0.proj
                                                    (GEGLU, 2*4*dim outputs), ff.net.2; CLIP q/k/v/out_proj,
                                                    mlp.fc1/fc2
  SVDEmbedding [N, D]       -> [min(N, D)]          CLIP token_embedding, position_embedding
  SVDGroupNorm, SVDLayerNorm -> [1]                 (the gain as a [1, C] matrix has one singular value)
                                                    resnet norm1/norm2, attention norm, transformer
                                                    norm1/2/3, conv_norm_out; CLIP layer_norm1/2,
                                                    final_layer_norm
Pure Python (no torch): the module tree is walked from the configs as diffusers builds it.

usage: gen_svdiff_pytorch_table.py --model tests/fixtures/tiny-sd/diffusers --out tests/fixtures/svdiff_pytorch
"""
import argparse
import json
import os


def unet_params(cfg):
    out = {}
    boc = cfg["block_out_channels"]
    lpb = cfg["layers_per_block"]
    cross = cfg["cross_attention_dim"]
    ted = boc[0] * 4
    assert cfg.get("transformer_layers_per_block", 1) == 1, "diffusers 0.14 has one transformer block"

    def lin(name, o, i):
        out[name] = min(o, i)

    def conv(name, o, i, k):
        out[name] = min(o, i * k * k)

    def norm(name):
        out[name] = 1

    def resnet(p, cin, cout):
        norm(p + "norm1")
        conv(p + "conv1", cout, cin, 3)
        lin(p + "time_emb_proj", cout, ted)
        norm(p + "norm2")
        conv(p + "conv2", cout, cout, 3)
        if cin != cout:
            conv(p + "conv_shortcut", cout, cin, 1)

    def attention(p, ch):
        inner = ch   # heads * (ch // heads)
        norm(p + "norm")
        if cfg.get("use_linear_projection", False):
            lin(p + "proj_in", inner, ch)
            lin(p + "proj_out", ch, inner)
        else:
            conv(p + "proj_in", inner, ch, 1)
            conv(p + "proj_out", ch, inner, 1)
        t = p + "transformer_blocks.0."
        for n in ("norm1", "norm2", "norm3"):
            norm(t + n)
        for a, kv in (("attn1", inner), ("attn2", cross)):
            lin(t + a + ".to_q", inner, inner)
            lin(t + a + ".to_k", inner, kv)
            lin(t + a + ".to_v", inner, kv)
            lin(t + a + ".to_out.0", inner, inner)
        lin(t + "ff.net.0.proj", 2 * 4 * inner, inner)
        lin(t + "ff.net.2", inner, 4 * inner)

    conv("conv_in", boc[0], cfg["in_channels"], 3)
    lin("time_embedding.linear_1", ted, boc[0])
    lin("time_embedding.linear_2", ted, ted)
    ch = boc[0]
    for i, kind in enumerate(cfg["down_block_types"]):
        o = boc[i]
        for j in range(lpb):
            resnet(f"down_blocks.{i}.resnets.{j}.", ch if j == 0 else o, o)
            if kind == "CrossAttnDownBlock2D":
                attention(f"down_blocks.{i}.attentions.{j}.", o)
        if i < len(boc) - 1:
            conv(f"down_blocks.{i}.downsamplers.0.conv", o, o, 3)
        ch = o
    resnet("mid_block.resnets.0.", boc[-1], boc[-1])
    attention("mid_block.attentions.0.", boc[-1])
    resnet("mid_block.resnets.1.", boc[-1], boc[-1])
    rev = list(reversed(boc))
    prev = rev[0]
    for i, kind in enumerate(cfg["up_block_types"]):
        o = rev[i]
        inp = rev[min(i + 1, len(rev) - 1)]
        for j in range(lpb + 1):
            skip = inp if j == lpb else o
            resnet(f"up_blocks.{i}.resnets.{j}.", (prev if j == 0 else o) + skip, o)
            if kind == "CrossAttnUpBlock2D":
                attention(f"up_blocks.{i}.attentions.{j}.", o)
        if i < len(rev) - 1:
            conv(f"up_blocks.{i}.upsamplers.0.conv", o, o, 3)
        prev = o
    norm("conv_norm_out")
    conv("conv_out", cfg["out_channels"], boc[0], 3)
    return out


def text_params(cfg):
    out = {}
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    out["text_model.embeddings.token_embedding"] = min(cfg["vocab_size"], h)
    out["text_model.embeddings.position_embedding"] = min(cfg["max_position_embeddings"], h)
    for l in range(cfg["num_hidden_layers"]):
        p = f"text_model.encoder.layers.{l}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + "self_attn." + n] = h
        out[p + "mlp.fc1"] = min(inter, h)
        out[p + "mlp.fc2"] = min(h, inter)
        out[p + "layer_norm1"] = 1
        out[p + "layer_norm2"] = 1
    out["text_model.final_layer_norm"] = 1
    return out


def write_table(path, params, source):
    with open(path, "w") as f:
        f.write(f"# svdiff-pytorch delta parameters for {source} (tests/reference/gen_svdiff_pytorch_table.py)\n")
        for k in sorted(params):
            f.write(f"{k}.delta {params[k]}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.model, "unet", "config.json")) as f:
        unet = json.load(f)
    with open(os.path.join(a.model, "text_encoder", "config.json")) as f:
        text = json.load(f)
    name = os.path.basename(os.path.normpath(os.path.join(a.model, "..")))
    write_table(os.path.join(a.out, "unet.txt"), unet_params(unet), name + " unet")
    write_table(os.path.join(a.out, "text_encoder.txt"), text_params(text), name + " text_encoder")


if __name__ == "__main__":
    main()

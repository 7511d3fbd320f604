#!/usr/bin/env python3
"""Writes an SDXL diffusers folder as one sgm single file, the layout of the SDXL checkpoints
people download (README, "SDXL models"): model.diffusion_model.* (the UNet, LDM block names),
conditioner.embedders.0.transformer.* (text_encoder, transformers' names),
conditioner.embedders.1.model.* (text_encoder_2 in OpenCLIP's layout: q/k/v fused into
attn.in_proj_*, text_projection stored transposed, positional_embedding, ln_final) and
first_stage_model.* (the VAE, when the folder has one; its mid attention as 1x1 convs).

Standard library only; the tensors' bytes are copied as they are stored (dtype kept), so the
single file holds exactly the folder's weights. Used by scripts/sdxl-demo.sh to run the same
model from both layouts.
    scripts/sdxl_single_file.py MODEL_DIR OUT.safetensors
"""
import json
import os
import struct
import sys

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
            "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
SIZE = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8, "I32": 4}


def read_st(path):
    """{name: (dtype, shape, bytes)} of one safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = (v["dtype"], v["shape"], data[a:b])
    return out


def read_component(folder):
    """The tensors of a component folder: one file, or an index and its shards."""
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if os.path.isfile(os.path.join(folder, name)):
            return read_st(os.path.join(folder, name))
    for name in ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            out = {}
            for shard in sorted(set(json.load(open(p))["weight_map"].values())):
                out.update(read_st(os.path.join(folder, shard)))
            return out
    sys.exit("sdxl_single_file: %s: no safetensors weights (unsharded or with an index)" % folder)


def unet_name(name, cfg):
    """diffusers UNet2DConditionModel name -> LDM (sgm) name."""
    s = cfg["layers_per_block"] + 1
    p = name.split(".")
    if name.startswith("add_embedding.linear_"):
        return "label_emb.0.%d.%s" % (0 if p[1] == "linear_1" else 2, p[-1])
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head = ".".join(p[:-1])
    if head in fixed:
        return "%s.%s" % (fixed[head], p[-1])

    def resnet(rest):
        h, t = rest.rsplit(".", 1)
        return RESNET[h] + "." + t

    if p[0] == "mid_block":
        rest = ".".join(p[3:])
        return "middle_block.1." + rest if p[1] == "attentions" else "middle_block.%d.%s" % (2 * int(p[2]), resnet(rest))
    i, j, rest = int(p[1]), int(p[3]), ".".join(p[4:])
    if p[0] == "down_blocks":
        if p[2] == "resnets":
            return "input_blocks.%d.0.%s" % (s * i + j + 1, resnet(rest))
        if p[2] == "attentions":
            return "input_blocks.%d.1.%s" % (s * i + j + 1, rest)
        return "input_blocks.%d.0.op.%s" % (s * (i + 1), p[-1])
    if p[0] == "up_blocks":
        if p[2] == "resnets":
            return "output_blocks.%d.0.%s" % (s * i + j, resnet(rest))
        if p[2] == "attentions":
            return "output_blocks.%d.1.%s" % (s * i + j, rest)
        attn = cfg["up_block_types"][i] == "CrossAttnUpBlock2D"
        return "output_blocks.%d.%d.conv.%s" % (s * i + s - 1, 2 if attn else 1, p[-1])
    raise KeyError(name)


def vae_name(name, levels):
    p = name.split(".")
    if p[0] in ("quant_conv", "post_quant_conv"):
        return name
    side, what = p[0], p[1]
    if what in ("conv_in", "conv_out"):
        return name
    if what == "conv_norm_out":
        return "%s.norm_out.%s" % (side, p[-1])
    if what in ("down_blocks", "up_blocks"):
        i = int(p[2])
        lvl, word = (i, "down") if what == "down_blocks" else (levels - 1 - i, "up")
        if p[3] == "resnets":
            return "%s.%s.%d.block.%s.%s" % (side, word, lvl, p[4], ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut"))
        return "%s.%s.%d.%s.conv.%s" % (side, word, lvl, "downsample" if word == "down" else "upsample", p[-1])
    if what == "mid_block":
        if p[2] == "resnets":
            return "%s.mid.block_%d.%s" % (side, int(p[3]) + 1, ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut"))
        return "%s.mid.attn_1.%s.%s" % (side, VAE_ATTN[".".join(p[4:-1])], p[-1])
    raise KeyError(name)


def transpose(dtype, shape, data):
    rows, cols = shape
    e = SIZE[dtype]
    out = bytearray(len(data))
    for r in range(rows):
        for c in range(cols):
            out[(c * rows + r) * e:(c * rows + r + 1) * e] = data[(r * cols + c) * e:(r * cols + c + 1) * e]
    return [cols, rows], bytes(out)


def openclip(te2, layers):
    pre = "conditioner.embedders.1.model."
    out = {pre + "token_embedding.weight": te2["text_model.embeddings.token_embedding.weight"],
           pre + "positional_embedding": te2["text_model.embeddings.position_embedding.weight"],
           pre + "ln_final.weight": te2["text_model.final_layer_norm.weight"],
           pre + "ln_final.bias": te2["text_model.final_layer_norm.bias"]}
    dt, shape, data = te2["text_projection.weight"]
    out[pre + "text_projection"] = (dt, *transpose(dt, shape, data))
    for i in range(layers):
        hp, op = "text_model.encoder.layers.%d." % i, "%stransformer.resblocks.%d." % (pre, i)
        for t in ("weight", "bias"):
            parts = [te2["%sself_attn.%s_proj.%s" % (hp, q, t)] for q in "qkv"]
            if len({x[0] for x in parts}) != 1:
                sys.exit("sdxl_single_file: text_encoder_2 layer %d: q/k/v %ss in different dtypes" % (i, t))
            shape = [sum(x[1][0] for x in parts)] + parts[0][1][1:]
            out[op + "attn.in_proj_" + t] = (parts[0][0], shape, b"".join(x[2] for x in parts))
            for h, o in OPENCLIP.items():
                out["%s%s.%s" % (op, o, t)] = te2["%s%s.%s" % (hp, h, t)]
    return out


def write_st(path, tensors):
    header, off = {}, 0
    for k, (dt, shape, data) in tensors.items():
        header[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for dt, shape, data in tensors.values():
            f.write(data)
    os.replace(tmp, path)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    model, out_path = sys.argv[1:]
    if not os.path.isdir(os.path.join(model, "text_encoder_2")):
        sys.exit("sdxl_single_file: %s: not an SDXL folder (no text_encoder_2/)" % model)
    ucfg = json.load(open(os.path.join(model, "unet", "config.json")))
    out = {}
    for k, v in read_component(os.path.join(model, "unet")).items():
        out["model.diffusion_model." + unet_name(k, ucfg)] = v
    for k, v in read_component(os.path.join(model, "text_encoder")).items():
        out["conditioner.embedders.0.transformer." + k] = v
    t2cfg = json.load(open(os.path.join(model, "text_encoder_2", "config.json")))
    out.update(openclip(read_component(os.path.join(model, "text_encoder_2")), t2cfg["num_hidden_layers"]))
    if os.path.isdir(os.path.join(model, "vae")):
        levels = len(json.load(open(os.path.join(model, "vae", "config.json")))["block_out_channels"])
        for k, (dt, shape, data) in read_component(os.path.join(model, "vae")).items():
            if ".mid_block.attentions.0.to_" in k and k.endswith(".weight"):
                shape = list(shape) + [1, 1]
            out["first_stage_model." + vae_name(k, levels)] = (dt, shape, data)
    write_st(out_path, out)
    print("wrote %s (%d tensors)" % (out_path, len(out)))


if __name__ == "__main__":
    main()

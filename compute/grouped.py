"""Many subset models trained at once: one step updates a whole group.

One small model leaves most of a GPU idle; a group of G models, each with
its own initialisation, classes, data order and learning-rate schedule,
trained as one batched computation (``torch.func.vmap`` over stacked
parameters), fills it. The arithmetic is the one-model path's
(:func:`.train.pretrain_network`): the same initial weights, the same
batches in the same order, SGD with Nesterov momentum and weight decay, the
same warm-up/decay schedule, BatchNorm with the same running statistics.
Two things differ only in form:

- models see different numbers of samples, so a batch may hold fewer than
  ``batch_size`` samples (an epoch's last) and a model may finish before the
  others: short batches are padded with samples of weight 0 (left out of the
  loss and of BatchNorm's statistics) and a finished model's update is
  masked out;
- models see different numbers of classes: heads are padded to the largest
  and the padded logits masked out of the softmax.

So a grouped model is its one-at-a-time twin up to floating-point rounding
(in float64 the two agree to 1e-8 after training: tests/unit/test_grouped.py); in
float32 such rounding differences grow during training, as they do between
thread counts.

Only ``resnet_small`` is grouped; other architectures train one at a time.
"""

import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

from .config import ENGINE_VERSION
from .nets import place_network
from .train import (
    _autocast,
    batch_schedule,
    lr_factor,
    resolve_device,
    resolve_precision,
    seeded_model,
    shift_images,
    transfer_outputs,
)

GROUPABLE_ARCHS = ("resnet_small",)


def can_group(config):
    return config.arch in GROUPABLE_ARCHS


def train_subset_models_grouped(config, indices, mask_rows, data, sample_masks=None):
    """Trains models ``indices`` (one per row of ``mask_rows``) as one group.

    Returns the list of output dicts of :func:`.train.train_subset_model`,
    in order. Raises ``ValueError`` naming the model whose mask selects no
    sample (nothing is trained then).
    """
    if not can_group(config):
        raise ValueError(f"grouped training supports {GROUPABLE_ARCHS}; got {config.arch!r}")
    nets, gens, states, device = pretrain_group(config, indices, mask_rows, data, sample_masks)
    outputs = []
    for net, gen, state in zip(nets, gens, states):
        # the one-model path builds the fine-tuning head from the global RNG
        # as it stood after building the network: restore that state
        torch.set_rng_state(state)
        outputs.append(transfer_outputs(config, net, gen, data, device))
    return outputs


def pretrain_group(config, indices, mask_rows, data, sample_masks=None):
    """Pretrains the group; returns ``(nets, generators, rng_states, device)``."""
    device = resolve_device(config.device)
    t = data.tensors(device)
    labels = t["pretrain_labels"]
    group = len(indices)
    if sample_masks is None:
        sample_masks = [None] * group

    nets, gens, states, selections, remaps = [], [], [], [], []
    for index, mask_row, sample_mask in zip(indices, mask_rows, sample_masks):
        net, gen, keep, remap = seeded_model(config, index, mask_row, data, device, sample_mask)
        nets.append(net)
        gens.append(gen)
        states.append(torch.get_rng_state())  # for the fine-tuning head (see above)
        selections.append(keep.nonzero().flatten())
        remaps.append(remap)
    num_classes = [net.head.out_features for net in nets]

    plan = _step_plan(
        selections,
        gens,
        config.epochs,
        config.batch_size,
        device,
        config.warmup_fraction,
        config.augment_shift,
    )
    params, buffers = _stack(nets, max(num_classes), device)
    class_valid = torch.zeros(group, max(num_classes), dtype=torch.bool, device=device)
    for g, k in enumerate(num_classes):
        class_valid[g, :k] = True
    remap_table = torch.stack(remaps)
    _fit_group(
        nets[0],
        params,
        buffers,
        t["pretrain"],
        labels,
        remap_table,
        class_valid,
        plan,
        config,
        device,
    )
    for g, net in enumerate(nets):
        _unstack_into(net, params, buffers, g, num_classes[g], plan["steps"][g])
        place_network(net, device)  # in place: nets[g] is this module
    return nets, gens, states, device


def _step_plan(selections, gens, epochs, batch_size, device, warmup_fraction, shift=0):
    """Every model's batches, step by step: the one-model loop's
    (:func:`~.train.batch_schedule`), stacked.

    Returns a dict of ``index`` ``(S, G, B)`` sample rows, ``weight``
    ``(S, G, B)`` (0 for padding), ``offsets`` ``(S, G, B, 2)`` (shift
    augmentation), ``active`` ``(S, G)``, ``lr_factor`` ``(S, G)`` and
    ``steps`` (per model).
    """
    per_model, offsets_of = [], []
    for sel, gen in zip(selections, gens):
        sel = sel.cpu()
        total, schedule = batch_schedule(len(sel), epochs, batch_size, gen, shift)
        batches, model_offsets = [], []
        for rows, offsets in schedule:
            batches.append(sel[rows])
            if shift:
                model_offsets.append(offsets)
        factors = [lr_factor(k, total, warmup_fraction) for k in range(len(batches))]
        if not batches:  # one sample: the one-model loop takes no step either
            batches, factors = [sel[:1].repeat(2)], []
            model_offsets = [torch.zeros(2, 2, dtype=torch.long)]
        offsets_of.append(model_offsets)
        per_model.append((batches, factors))

    num_steps = max(len(b) for b, _ in per_model)
    group = len(per_model)
    index = torch.zeros(num_steps, group, batch_size, dtype=torch.long)
    weight = torch.zeros(num_steps, group, batch_size)
    offsets = torch.zeros(num_steps, group, batch_size, 2, dtype=torch.long)
    active = torch.zeros(num_steps, group, dtype=torch.bool)
    factor = torch.zeros(num_steps, group, dtype=torch.float64)
    for g, (batches, factors) in enumerate(per_model):
        for s, idx in enumerate(batches):
            index[s, g, : len(idx)] = idx
            index[s, g, len(idx) :] = idx[0]
            weight[s, g, : len(idx)] = 1.0
            if shift:
                offsets[s, g, : len(idx)] = offsets_of[g][s]
        active[: len(factors), g] = True
        factor[: len(factors), g] = torch.tensor(factors, dtype=torch.float64)
        # a finished model still computes (on its last batch) but never updates
        index[len(batches) :, g] = index[len(batches) - 1, g]
        weight[len(batches) :, g] = weight[len(batches) - 1, g]
    return {
        "index": index.to(device),
        "weight": weight.to(device),
        "offsets": offsets.to(device) if shift else None,
        "active": active.to(device),
        "lr_factor": factor.to(device),
        "steps": [len(f) for _, f in per_model],
    }


def _stack(nets, max_classes, device):
    """Stacked parameters and running statistics ``(G, ...)``, heads padded with zeros."""
    states = [net.state_dict() for net in nets]
    param_names = {name for name, _ in nets[0].named_parameters()}
    params, buffers = {}, {}
    for name in states[0]:
        if name.endswith("num_batches_tracked"):
            continue
        values = [state[name] for state in states]
        if name.startswith("head."):
            padded = [v.new_zeros((max_classes,) + v.shape[1:]) for v in values]
            for out, v in zip(padded, values):
                out[: len(v)] = v
            values = padded
        (params if name in param_names else buffers)[name] = torch.stack(values).to(device)
    return params, buffers


def _unstack_into(net, params, buffers, g, num_classes, steps):
    state = {}
    for name, value in list(params.items()) + list(buffers.items()):
        value = value[g].detach()
        state[name] = value[:num_classes] if name.startswith("head.") else value
    for name, value in net.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(steps, dtype=value.dtype)
    net.load_state_dict({k: v.cpu() for k, v in state.items()})


def _fit_group(
    template, params, buffers, images, labels, remap_table, class_valid, plan, config, device
):
    """SGD (Nesterov momentum, weight decay) on every model of the group at once."""
    model_forward = _masked_forward(template)
    smoothing = config.label_smoothing

    def loss_fn(p, b, x, y, w, valid):
        logits, new_buffers = model_forward(p, b, x, w)
        logits = _at_least_fp32(logits).masked_fill(~valid, float("-inf"))
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(1, y[:, None]).squeeze(1)
        smooth = -torch.where(valid, logp, torch.zeros_like(logp)).sum(-1) / valid.sum()
        per_sample = (1 - smoothing) * nll + smoothing * smooth
        return (per_sample * w).sum() / w.sum(), new_buffers

    step_grads = vmap(grad_and_value(loss_fn, has_aux=True))
    momentum = {k: None for k in params}
    mu = config.momentum
    lr, wd = config.lr, config.weight_decay
    for s in range(plan["index"].shape[0]):
        idx = plan["index"][s]  # (G, B)
        x = images[idx]  # (G, B, C, H, W)
        if config.augment_shift:
            x = shift_images(
                x.flatten(0, 1), plan["offsets"][s].flatten(0, 1), config.augment_shift
            ).reshape(x.shape)
        y = remap_table.gather(1, labels[idx])  # (G, B)
        with _autocast(device, config.precision):
            grads, (_, new_buffers) = step_grads(
                params, buffers, x, y, plan["weight"][s], class_valid
            )
        active = plan["active"][s]
        step_lr = lr * plan["lr_factor"][s]  # float64
        with torch.no_grad():
            for name, p in params.items():
                shape = (-1,) + (1,) * (p.dim() - 1)
                on = active.view(shape)
                d = grads[name] + wd * p
                buf = momentum[name]
                # torch's SGD starts the buffer at the first gradient
                buf = d.clone() if buf is None else torch.where(on, mu * buf + d, buf)
                momentum[name] = buf
                update = d + mu * buf
                params[name] = torch.where(on, p - step_lr.to(p.dtype).view(shape) * update, p)
            for name, b in buffers.items():
                on = active.view((-1,) + (1,) * (b.dim() - 1))
                buffers[name] = torch.where(on, new_buffers[name].to(b.dtype), b)


def _masked_forward(net):
    """``f(params, buffers, x, weight) -> (logits, new_buffers)`` for one
    SmallResNet in train mode, BatchNorm statistics over weighted samples."""

    def conv(p, name, x, module):
        return F.conv2d(x, p[f"{name}.weight"], None, module.stride, module.padding)

    # the constants of the template's own BatchNorm layers (see nets.network_for),
    # looked up once rather than at every step
    bn_constants = {
        name: (m.eps, m.momentum)
        for name, m in net.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }

    def bn(p, b, new_b, name, x, w):
        eps, bn_momentum = bn_constants[name]
        x = _at_least_fp32(x)  # statistics in fp32 under bf16 autocast
        wx = w.view(-1, 1, 1, 1)
        count = w.sum() * x.shape[2] * x.shape[3]
        mean = (x * wx).sum((0, 2, 3)) / count
        centered = x - mean.view(1, -1, 1, 1)
        var = (centered.square() * wx).sum((0, 2, 3)) / count
        out = centered * torch.rsqrt(var + eps).view(1, -1, 1, 1)
        out = out * p[f"{name}.weight"].view(1, -1, 1, 1) + p[f"{name}.bias"].view(1, -1, 1, 1)
        # running variance is unbiased, as in nn.BatchNorm2d
        new_b[f"{name}.running_mean"] = (1 - bn_momentum) * b[
            f"{name}.running_mean"
        ] + bn_momentum * mean.detach()
        new_b[f"{name}.running_var"] = (1 - bn_momentum) * b[
            f"{name}.running_var"
        ] + bn_momentum * var.detach() * count / (count - 1)
        return out

    def forward(p, b, x, w):
        new_b = {}
        out = torch.relu(bn(p, b, new_b, "stem.1", conv(p, "stem.0", x, net.stem[0]), w))
        for i, block in enumerate(net.stages):
            name = f"stages.{i}"
            h = torch.relu(
                bn(p, b, new_b, f"{name}.bn1", conv(p, f"{name}.conv1", out, block.conv1), w)
            )
            h = bn(p, b, new_b, f"{name}.bn2", conv(p, f"{name}.conv2", h, block.conv2), w)
            skip = out
            if block.shortcut is not None:
                skip = bn(
                    p,
                    b,
                    new_b,
                    f"{name}.shortcut.1",
                    conv(p, f"{name}.shortcut.0", out, block.shortcut[0]),
                    w,
                )
            out = torch.relu(h + skip)
        features = out.mean((2, 3))  # global average pool (vmap has no fast rule for the op)
        return F.linear(features, p["head.weight"], p["head.bias"]), new_b

    return forward


def _at_least_fp32(x):
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# --- how many models to group ---------------------------------------------------


def group_size_for_memory(free_bytes, bytes_per_model, num_jobs, cap=64, headroom=0.8):
    """The largest group that fits ``headroom`` of the free memory (>= 1)."""
    if bytes_per_model <= 0:
        raise ValueError("bytes_per_model must be > 0")
    fits = int(headroom * free_bytes // bytes_per_model)
    return max(1, min(fits, cap, num_jobs))


PROBE_BATCHES = 6  # steps per model of the GPU memory measurement
GROUP_SIZE_CACHE_ENV = "TRANSFERSCOPE_GROUP_SIZE_CACHE"  # a JSON file, or "off"


def auto_group_size(config, data, num_jobs):
    """How many models to train at once.

    On a GPU: as many as fit in its free memory, from the memory a group of 2
    takes, measured once per (device, network shape) and cached in
    :func:`group_size_cache_path`. On a CPU: 1. Grouping there was measured
    at 0.39-0.46x one model at a time in fp32 (AMD and Intel with AMX) and
    0.45-0.49x in bf16 (AMD), and a timing probe that could choose it for
    small models picked by noise (8, 1, 1 in three tries): a grouped model
    equals its one-at-a-time twin only up to rounding, so a run's
    arithmetic must not depend on a noisy timing.
    """
    device = resolve_device(config.device)
    if device.type != "cuda" or not can_group(config) or num_jobs < 2:
        return 1
    key = _cache_key("bytes_per_model", device, config, data)
    per_model = _cached(key, lambda: _measure_bytes_per_model(config, data, device))
    free, _ = torch.cuda.mem_get_info(device)
    return group_size_for_memory(free, per_model, num_jobs)


def group_size_cache_path():
    """The measurements' file (``$TRANSFERSCOPE_GROUP_SIZE_CACHE``, default
    ``~/transferscope/cache/group_sizes.json``), or ``None`` when ``"off"``."""
    raw = os.environ.get(GROUP_SIZE_CACHE_ENV, "")
    if raw.lower() == "off":
        return None
    return raw or os.path.join(
        os.path.expanduser("~"), "transferscope", "cache", "group_sizes.json"
    )


def _cache_key(kind, device, config, data):
    """What the measurement depends on: the GPU, torch, the network's shape
    and the precision (not the data's contents or the seeds)."""
    props = torch.cuda.get_device_properties(device)
    shape = [
        config.arch,
        config.width,
        config.image_size,
        config.channels,
        config.batch_size,
        data.num_pretrain_classes,
        resolve_precision(device, config.precision),
        config.augment_shift > 0,
    ]
    where = f"{props.name}, {props.total_memory} bytes"
    return json.dumps([kind, where, torch.__version__, ENGINE_VERSION, shape])


def _cached(key, measure):
    """``measure()``'s value under ``key`` in the cache file: measured once
    per key (other processes wait for the first), kept as JSON."""
    path = group_size_cache_path()
    if path is None:
        return measure()
    from filelock import FileLock

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with FileLock(path + ".lock"):
        entries = _read_cache(path)
        if key not in entries:
            entries[key] = measure()
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(entries, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        return entries[key]


def _read_cache(path):
    # a damaged or foreign file is measured over, not trusted
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(entries, dict):
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, int) and v >= 1}


def _measure_bytes_per_model(config, data, device):
    """The GPU memory of one model, from a group of 2 trained for
    ``PROBE_BATCHES`` batches each (a step's memory does not depend on how
    many steps there are)."""
    probe = type(config).from_dict({**config.to_dict(), "epochs": 1})
    masks = np.zeros((2, data.num_pretrain_classes), dtype=bool)
    masks[:, : max(1, data.num_pretrain_classes // 2)] = True
    labels = np.asarray(data.pretrain_labels)
    sample_mask = np.zeros(len(labels), dtype=bool)
    sample_mask[np.flatnonzero(masks[0][labels])[: PROBE_BATCHES * config.batch_size]] = True
    data.tensors(device)  # the shared images are not a per-model cost
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    pretrain_group(probe, [0, 1], masks, data, [sample_mask, sample_mask])
    return max(1, int(torch.cuda.max_memory_allocated(device) - before) // 2)

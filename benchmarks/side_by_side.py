"""``hdetr bench speed --official PATH``: hdetr against the official code, same inputs, interleaved.

Both models get the same weights (the official model's initialisation, converted with
``hdetr.weights.convert_official_state_dict``), the same precomputed backbone features, mask and
targets. Each repetition runs every (model, implementation) pair, the order reversing each time, so
every ratio is taken side by side. Before timing, the first (warm-up) step of each pair checks that
both do the same work: trainable parameter counts, loss terms (names and values), and the number of
matched (query, target) pairs of every Hungarian matching, plus how many of the final one-to-one
pairs are identical.
"""

from __future__ import annotations

import statistics

from .timing import BASELINE_PRESET, HYBRID_PRESET, Timer, build, record, schedule_pairs

IMPLS = ("official", "fast")  # result keys: the official code, hdetr's default (fast) path


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _pairs(calls) -> int:
    return sum(len(src) for call in calls for src, _ in call)


def _targets(targets, device):
    return [{k: v.to(device) for k, v in t.items()} for t in targets]


def measure_side_by_side(args, inputs, image_size, results: dict, checks: dict, warmup: int, sync) -> dict:
    import torch

    from hdetr.weights import convert_official_state_dict
    from .official import RecordingMatcher, build_official, load_official, official_train_losses

    device = args.device
    code = load_official(args.official, device)
    info = {"path": str(code.root), "attention": code.attention, "stubbed_modules": code.stubbed}
    _, mask, features, targets = inputs
    mask = mask.to(device)
    features = [f.to(device) for f in features]
    samples = code.nested_tensor(torch.zeros(1, 3, *image_size, device=device), mask)
    only = set(args.only or ["hybrid", "baseline", "eval"])
    built = {}
    for tag, preset in (("hybrid", HYBRID_PRESET), ("baseline", BASELINE_PRESET)):
        if tag not in only and not (tag == "hybrid" and "eval" in only):
            continue
        net, crit, oargs = build_official(code, tag, features, device)
        crit.matcher = RecordingMatcher(crit.matcher)
        cfg, model, criterion, _, plan = build(preset, "fast", False, getattr(args, "checkpoint_activations", None))
        model.to(device)
        own = {k: v for k, v in net.state_dict().items() if not k.startswith("backbone.0.body.")}
        missing, unexpected = model.load_state_dict(convert_official_state_dict(own), strict=False)
        checks[f"{tag}.same_weights"] = not missing and not unexpected
        checks[f"{tag}.trainable_parameters"] = {"official": _trainable(net), "hdetr": _trainable(model)}
        checks[f"{tag}.official_args"] = {k: getattr(oargs, k) for k in (
            "num_queries_one2one", "num_queries_one2many", "k_one2many", "lambda_one2many", "dim_feedforward",
            "enc_layers", "dec_layers", "two_stage", "with_box_refine", "mixed_selection", "look_forward_twice",
            "dropout") if hasattr(oargs, k)}
        built[tag] = (net, crit, oargs, cfg, model, criterion, plan)

    def official_step(tag):
        net, crit, oargs = built[tag][:3]
        net.train()
        net.zero_grad(set_to_none=True)
        crit.matcher.calls.clear()
        with Timer(sync) as t_fwd:
            loss_dict, total = official_train_losses(code, net, crit, oargs, samples, _targets(targets, device))
        with Timer(sync) as t_bwd:
            total.backward()
        return t_fwd, t_bwd, loss_dict, total, crit.matcher.calls

    def hdetr_step(tag):
        cfg, model, criterion, plan = built[tag][3:]
        model.train()
        model.zero_grad(set_to_none=True)
        matches = {}
        with Timer(sync) as t_fwd:
            out = model(None, mask, features=features)
            losses = criterion(out, _targets(targets, device), plan, matches=matches)
            total = criterion.total(losses)
        with Timer(sync) as t_bwd:
            total.backward()
        calls = [[(s.tolist(), t.tolist()) for s, t in indices] for indices in matches.values()]
        return t_fwd, t_bwd, losses, total, calls, matches

    trained = [t for t in ("hybrid", "baseline") if t in only and t in built]
    pairs = [(tag, impl) for tag in trained for impl in IMPLS]
    for rep, order in schedule_pairs(pairs, args.repeats, warmup):
        done = {}
        for tag, impl in order:
            if impl == "official":
                t_fwd, t_bwd, losses, total, calls = official_step(tag)
                extra = None
            else:
                t_fwd, t_bwd, losses, total, calls, extra = hdetr_step(tag)
            done[(tag, impl)] = (losses, total, calls, extra)
            step = Timer()
            step.wall, step.cpu = t_fwd.wall + t_bwd.wall, t_fwd.cpu + t_bwd.cpu
            if rep is not None:
                for name, t in (("forward_and_loss", t_fwd), ("backward", t_bwd), ("train_step", step)):
                    record(results, impl, f"{tag}.{name}", t)
            # A full-size official step takes tens of seconds: say what was measured as it goes.
            print(f"  {'warm-up' if rep is None else f'repetition {rep + 1}/{args.repeats}'}: {tag} {impl} "
                  f"{step.wall:.1f} s / {step.cpu:.1f} CPU-s", flush=True)
        if trained and f"{trained[0]}.loss_terms" not in checks:  # the first step of each pair (the warm-up if any)
            for tag in trained:
                _compare(tag, done[(tag, "official")], done[(tag, "fast")], built[tag][1], checks)

    if "eval" in only:
        net, model = built["hybrid"][0], built["hybrid"][4]
        net.eval()
        model.eval()
        outs = {}
        for rep, order in schedule_pairs(list(IMPLS), args.repeats, warmup):
            for impl in order:
                with torch.no_grad(), Timer(sync) as t:
                    outs[impl] = net(samples) if impl == "official" else model(None, mask, features=features)
                if rep is not None:
                    record(results, impl, "eval.forward", t)
                print(f"  {'warm-up' if rep is None else f'repetition {rep + 1}/{args.repeats}'}: eval {impl} "
                      f"{t.wall:.1f} s / {t.cpu:.1f} CPU-s", flush=True)
        a, b = outs["official"], outs["fast"]
        checks["eval.pred_logits_shape"] = {"official": list(a["pred_logits"].shape), "hdetr": list(b["pred_logits"].shape)}
        checks["eval.pred_logits_max_abs_diff"] = float((a["pred_logits"] - b["pred_logits"]).abs().max())
    return info


def _compare(tag, official, ours, crit, checks) -> None:
    (o_losses, o_total, o_calls, _), (h_losses, h_total, h_calls, matches) = official, ours
    weighted = {k for k in o_losses if k in crit.weight_dict}
    names_o, names_h = set(o_losses), set(h_losses)
    diffs = {k: abs(float(o_losses[k].detach()) - float(h_losses[k].detach())) for k in names_o & names_h}
    checks[f"{tag}.loss_terms"] = {
        "official": len(names_o), "hdetr": len(names_h), "weighted_official": len(weighted),
        "only_official": sorted(names_o - names_h), "only_hdetr": sorted(names_h - names_o),
        "max_abs_diff": max(diffs.values()) if diffs else None,
    }
    checks[f"{tag}.loss_total"] = {"official": float(o_total.detach()), "hdetr": float(h_total.detach())}
    final = matches.get("one2one.final")
    same_final = None
    if final is not None and o_calls:
        # The official criterion matches the last decoder layer first.
        o_final = {(s, t) for src, tgt in o_calls[0] for s, t in zip(src, tgt)}
        h_final = {(s, t) for src, tgt in ([(a.tolist(), b.tolist()) for a, b in final]) for s, t in zip(src, tgt)}
        same_final = f"{len(o_final & h_final)}/{len(o_final)}"
    checks[f"{tag}.matched_pairs"] = {
        "official": _pairs(o_calls), "hdetr": _pairs(h_calls),
        "matchings_official": len(o_calls), "matchings_hdetr": len(h_calls),
        "final_one2one_identical": same_final,
    }


def ratios(summary: dict) -> dict:
    """hdetr (fast) / official, medians of wall and of process CPU time."""
    out = {}
    off, fast = summary.get("official", {}), summary.get("fast", {})
    for key in ("hybrid.train_step", "baseline.train_step", "eval.forward"):
        if key in off and key in fast:
            out[key] = {"wall": fast[key]["median_s"] / off[key]["median_s"],
                        "cpu": fast[key]["median_cpu_s"] / off[key]["median_cpu_s"]}
            paired = [f / o for f, o in zip(fast[key]["wall_s"], off[key]["wall_s"])]
            out[key]["wall_paired"] = paired
            out[key]["wall_paired_median"] = statistics.median(paired)
    return out

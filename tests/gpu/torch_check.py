"""PyTorch on one CUDA device, for scripts/gpu-check.sh: run once natively and once on vgpu, then
compare the two JSON files. Everything is seeded, so both runs compute the same thing.

    python3 torch_check.py run OUT.json [--device cuda|cpu] [--quick]
    python3 torch_check.py compare NATIVE.json VGPU.json

run: matmul, conv2d and softmax results (summarised by checksums of the exact values and kept
as small samples), a 20-step training loop of a small CNN (its losses), and a greedy decode of
64 tokens by a randomly initialised GPT-2 from transformers (its tokens, tokens per second), each
with its time. compare: results equal within tolerance (float32 on the same GPU: 1e-5 relative
for the losses, 1e-4 for the ops, which may pick other algorithms), identical tokens, and vgpu's
times as a percentage of native (the decode tokens/s ratio is the headline figure).
--device cpu exercises the script itself where there is no GPU (no figure means anything then).
"""
import json, sys, time


def timed(device, fn, repeat=1):
    import torch
    fn()  # warm-up: kernels loaded, allocator primed
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t) / repeat


def run(path, device, quick):
    import torch
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    res = {"device": device, "torch": torch.__version__}
    if device == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
    n = 512 if quick else 4096
    g = torch.Generator().manual_seed(1)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    c, t = timed(device, lambda: a @ b, repeat=3)
    res["matmul"] = {"n": n, "seconds": t, "tflops": 2 * n**3 / t / 1e12, "sample": c[:4, :4].flatten().tolist(), "norm": float(c.norm())}
    x = torch.randn(16, 3, 64, 64, generator=g).to(device)
    conv = torch.nn.Conv2d(3, 32, 3, padding=1).to(device)
    y, t = timed(device, lambda: conv(x), repeat=5)
    res["conv2d"] = {"seconds": t, "sample": y[0, 0, :2, :4].flatten().tolist(), "norm": float(y.norm())}
    s, t = timed(device, lambda: torch.softmax(a[:256], dim=1), repeat=5)
    res["softmax"] = {"seconds": t, "sample": s[0, :8].tolist(), "norm": float(s.norm())}

    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.randn(20, 64, 1, 28, 28, generator=g).to(device)
    labels = torch.randint(0, 10, (20, 64), generator=g).to(device)
    losses = []
    t = time.perf_counter()
    for step in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(data[step]), labels[step])
        loss.backward()
        opt.step()
        losses.append(float(loss))
    res["train"] = {"losses": losses, "seconds": time.perf_counter() - t}

    try:
        import transformers
    except ImportError:
        res["decode"] = {"skipped": "transformers is not installed"}
    else:
        torch.manual_seed(3)
        cfg = transformers.GPT2Config(n_layer=4 if quick else 12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
        gpt = transformers.GPT2LMHeadModel(cfg).to(device).eval()
        prompt = torch.randint(0, cfg.vocab_size, (1, 16), generator=g).to(device)
        new = 16 if quick else 64
        with torch.no_grad():
            gpt.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = gpt.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
            if device == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t
        res["decode"] = {"tokens": out[0, 16:].tolist(), "seconds": secs, "tokens_per_s": new / secs, "layers": cfg.n_layer}
    with open(path, "w") as f:
        json.dump(res, f)
    print(json.dumps({k: (v if k in ("device", "torch", "gpu") else "ok") for k, v in res.items()}))


def close(a, b, rel):
    return all(abs(x - y) <= rel * max(abs(x), abs(y), 1e-6) for x, y in zip(a, b)) and len(a) == len(b)


def compare(native_path, vgpu_path):
    n, v = json.load(open(native_path)), json.load(open(vgpu_path))
    ok, rows = True, []
    for op in ("matmul", "conv2d", "softmax"):
        same = close(n[op]["sample"], v[op]["sample"], 1e-4) and close([n[op]["norm"]], [v[op]["norm"]], 1e-4)
        ok &= same
        rows.append((op, "equal" if same else "DIFFERS", 100 * n[op]["seconds"] / v[op]["seconds"]))
    same = close(n["train"]["losses"], v["train"]["losses"], 1e-5)
    ok &= same
    rows.append(("train (20 steps)", "losses equal" if same else "LOSSES DIFFER", 100 * n["train"]["seconds"] / v["train"]["seconds"]))
    figures = {"matmul_tflops": {"native": n["matmul"]["tflops"], "vgpu": v["matmul"]["tflops"]}}
    if "tokens" in n.get("decode", {}) and "tokens" in v.get("decode", {}):
        same = n["decode"]["tokens"] == v["decode"]["tokens"]
        ok &= same
        ratio = 100 * v["decode"]["tokens_per_s"] / n["decode"]["tokens_per_s"]
        rows.append(("gpt2 greedy decode", "tokens identical" if same else "TOKENS DIFFER", ratio))
        figures["decode_tokens_per_s"] = {"native": n["decode"]["tokens_per_s"], "vgpu": v["decode"]["tokens_per_s"], "percent_of_native": ratio}
    else:
        rows.append(("gpt2 greedy decode", "skipped: " + n.get("decode", {}).get("skipped", v.get("decode", {}).get("skipped", "?")), 0.0))
    for name, verdict, pct in rows:
        print(f"{name:<22} {verdict:<18} vgpu speed {pct:6.1f}% of native")
    print(json.dumps({"pass": ok, "figures": figures}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "run":
        dev = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cuda"
        run(sys.argv[2], dev, "--quick" in sys.argv)
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)

"""llama.cpp's prebuilt CUDA backend (PyPI's cyllama-cuda12, unmodified) on vgpu against llama.cpp's
own CPU backend, on tiny random-weight models this script makes.

    llama_check.py make DIR                      # write the models (F32, F16, Q8_0, Q4_0, Q4_K)
    llama_check.py run MODEL KV MODE N           # one run: prints the tokens and the logits' digest
    llama_check.py compare DIR [CONFIG ...]      # each config on the CPU and on vgpu, compared
    llama_check.py bench DIR [CONFIG ...]        # decode tokens/s, CPU backend and vgpu side by side

A CONFIG is WEIGHTS:KV:MODE, e.g. F16:f16:prompt (KV cache type f16 or f32; MODE `one` feeds the
prompt a token at a time, `prompt` as one batch). A run greedily decodes N tokens after a fixed
prompt; `compare` runs each config twice in child processes, once with no GPU (VGPU_SOCKET
pointing nowhere: llama.cpp sees no CUDA device and runs on its CPU backend) and once on vgpu
(everything offloaded), and requires the same tokens, and logits whose normalized mean squared
error against the CPU's is within ggml's own tolerance for the weight type (test-backend-ops:
1e-7 for float types; quantized dot products round activations to 8 bits on both backends, in
different ways, so 5e-4 there). Prints `LLAMA-CHECK ok|FAIL <config> ...` and PASS at the end.
"""
import json
import os
import subprocess
import sys

import numpy as np

VOCAB = 259  # <unk> <s> </s> and the 256 bytes
N_EMBD, N_FF, N_LAYER, N_HEAD, N_HEAD_KV = 256, 512, 2, 4, 2
PROMPT = [1, 72, 101, 108, 108, 111, 44, 32, 118, 103, 112, 117]  # <s> "Hello, vgpu"
FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K": 14}  # llama_ftype values
# Logits' normalized mean squared error allowed, vgpu against the CPU. Both backends compute F32
# in f32; F16 weights meet activations rounded to f16 on one backend and not the other; the
# quantized types round activations to 8 bits differently on each. ggml's own test-backend-ops
# allows a matrix multiplication 5e-4; the model chains 8 of them (2 layers of q/k/v/o and
# the FFN's three, then the output), so 4e-3 there.
NMSE_MAX = {"F32": 1e-6, "F16": 1e-4, "Q8_0": 4e-3, "Q4_0": 4e-3, "Q4_K": 4e-3}


def make(out_dir):
    import gguf

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(18)
    path = os.path.join(out_dir, "tiny-F32.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([2, 3, 3] + [6] * 256)  # unknown, control, control, byte
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def t(name, *shape, scale=1.0):
        # ggml's shapes are reversed numpy ones; weights scaled to keep activations near 1.
        a = (rng.standard_normal(shape[::-1]) * scale / np.sqrt(shape[0])).astype(np.float32)
        w.add_tensor(name, a)

    t("token_embd.weight", N_EMBD, VOCAB, scale=np.sqrt(N_EMBD))
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, np.float32))
        t(f"blk.{i}.attn_q.weight", N_EMBD, N_EMBD)
        t(f"blk.{i}.attn_k.weight", N_EMBD, N_EMBD // N_HEAD * N_HEAD_KV)
        t(f"blk.{i}.attn_v.weight", N_EMBD, N_EMBD // N_HEAD * N_HEAD_KV)
        t(f"blk.{i}.attn_output.weight", N_EMBD, N_EMBD)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, np.float32))
        t(f"blk.{i}.ffn_gate.weight", N_EMBD, N_FF)
        t(f"blk.{i}.ffn_up.weight", N_EMBD, N_FF)
        t(f"blk.{i}.ffn_down.weight", N_FF, N_EMBD)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    # Large output weights: well separated logits, so greedy choices are not near-ties.
    t("output.weight", N_EMBD, VOCAB, scale=8.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    import cyllama.llama.llama_cpp as L

    for name, ftype in FTYPES.items():
        if name == "F32":
            continue
        p = L.LlamaModelQuantizeParams()
        p.ftype = ftype
        p.pure = True  # every matrix in the one type (the embeddings and output too)
        L.model_quantize(path, os.path.join(out_dir, f"tiny-{name}.gguf"), p)
    print("made", sorted(os.listdir(out_dir)))


def run(model_path, kv, mode, n, forced=None):
    import cyllama.llama.llama_cpp as L

    if not os.environ.get("LLAMA_CHECK_VERBOSE"):
        L.disable_logging()
    L.llama_backend_init()
    L.ggml_backend_load_all()
    mp = L.LlamaModelParams()
    mp.n_gpu_layers = 99
    class Model(L.LlamaModel):
        # cyllama 0.2.18's get_logits reads model.n_vocab, which its LlamaModel lacks.
        n_vocab = VOCAB

    model = Model(model_path, mp)
    cp = L.LlamaContextParams()
    cp.n_ctx = 64
    cp.n_batch = 64
    cp.n_ubatch = 64
    cp.n_threads = 1
    cp.n_threads_batch = 1
    ggml_type = {"f32": 0, "f16": 1}[kv]
    cp.type_k = ggml_type
    cp.type_v = ggml_type
    ctx = L.LlamaContext(model, cp)
    batch = L.LlamaBatch(n_tokens=64, embd=0, n_seq_max=1)
    logits_out = []

    def feed(tokens, start):
        batch.clear()
        for j, tok in enumerate(tokens):
            batch.add(tok, start + j, [0], j == len(tokens) - 1)
        ctx.decode(batch)
        return np.array(ctx.get_logits_ith(len(tokens) - 1), dtype=np.float64)

    if mode == "prompt":
        last = feed(PROMPT, 0)
    else:
        for j, tok in enumerate(PROMPT):
            last = feed([tok], j)
    out = []
    pos = len(PROMPT)
    import time

    t0 = time.perf_counter()
    for k in range(n):
        logits_out.append(last.tolist())
        tok = int(np.argmax(last))
        out.append(tok)
        # Teacher forcing: the next input is the reference run's token, so both runs' logits
        # stay comparable position by position even where a near-tie went the other way.
        last = feed([forced[k] if forced else tok], pos)
        pos += 1
    ctx.synchronize()
    decode_s = time.perf_counter() - t0
    print(json.dumps({"tokens": out, "logits": logits_out, "decode_tokens_per_s": n / decode_s}))


def run_child(model_dir, config, n, where, forced=None):
    """One run of `config` in a child process, on llama.cpp's CPU backend (`where` "cpu": our
    libcuda finds no mediator, so ggml sees no CUDA device) or on vgpu: its JSON result, or
    None and the error lines of its stderr."""
    weights, kv, mode = config.split(":")
    args = [sys.executable, os.path.abspath(__file__), "run", os.path.join(model_dir, f"tiny-{weights}.gguf"), kv, mode, str(n)]
    env = dict(os.environ)
    if where == "cpu":
        env["VGPU_SOCKET"] = "/nonexistent/vgpu-no-gpu.sock"
    elif where == "vgpu-baseline":
        env["VGPU_SOCKET"] = os.environ["VGPU_SOCKET_BASELINE"]
    if forced:
        args.append(json.dumps(forced))
    r = subprocess.run(args, env=env, capture_output=True, text=True)
    line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode != 0 or not line.startswith("{"):
        err = "\n".join(l for l in r.stderr.splitlines() if "vgpu" in l or "error" in l.lower())[-1500:]
        return None, f"exit {r.returncode}: {err}"
    return json.loads(line), None


def compare(model_dir, configs, n):
    failed = 0
    for config in configs:
        weights = config.split(":")[0]
        results = {}
        for where in ("cpu", "vgpu"):
            res, err = run_child(model_dir, config, n, where, results["cpu"]["tokens"] if where == "vgpu" else None)
            if res is None:
                print(f"LLAMA-CHECK FAIL {config}: the {where} run failed ({err})")
                break
            results[where] = res
        if len(results) < 2:
            failed += 1
            continue
        cpu, gpu = results["cpu"], results["vgpu"]
        a, b = np.array(cpu["logits"]), np.array(gpu["logits"])
        nmse = float(np.sum((a - b) ** 2) / np.sum(a ** 2))
        # A position whose two best CPU logits are closer than 4x the backends' rms difference
        # there is a near-tie: legitimate rounding differences may pick either token.
        ties, wrong = [], []
        for k, (x, y) in enumerate(zip(a, b)):
            top = np.sort(x)[-2:]
            if top[1] - top[0] < 4 * np.sqrt(np.mean((x - y) ** 2)):
                ties.append(k)
            elif cpu["tokens"][k] != gpu["tokens"][k]:
                wrong.append(k)
        ok = not wrong and nmse <= NMSE_MAX[weights]
        failed += not ok
        print(f"LLAMA-CHECK {'ok' if ok else 'FAIL'} {config}: {n - len(ties) - len(wrong)}/{n} greedy tokens equal"
              + (f", near-ties at {ties}" if ties else "") + (f", DIFFERENT at {wrong}" if wrong else "")
              + f"; logits NMSE {nmse:.3g} (max {NMSE_MAX[weights]:g}); cpu {cpu['tokens']} vgpu {gpu['tokens']}")
    print("PASS" if failed == 0 else f"FAILED {failed}")
    return 1 if failed else 0


def bench(model_dir, configs, n):
    """Decode speed (tokens/s after the prompt) of the CPU backend and of vgpu, in one run; with
    VGPU_SOCKET_BASELINE (a mediator whose sim runs the engine VGPU_BASELINE_ENGINE names), that too."""
    wheres = ["cpu", "vgpu"] + (["vgpu-baseline"] if os.environ.get("VGPU_SOCKET_BASELINE") else [])
    base = os.environ.get("VGPU_BASELINE_ENGINE", "baseline")
    head = f"{'config':18} {'CPU backend':>14} {'vgpu (sim)':>14} {'vgpu / CPU':>11}"
    print(head + (f" {base + ' engine':>15} {'vgpu / ' + base:>14}" if len(wheres) > 2 else ""))
    for config in configs:
        c, g, *t = ((run_child(model_dir, config, n, where)[0] or {}).get("decode_tokens_per_s") for where in wheres)
        ratio = f"{g / c:.2e}" if c and g else "-"
        line = f"{config:18} {c or 0:>12.1f}/s {g or 0:>12.2f}/s {ratio:>11}"
        if t:
            line += f" {t[0] or 0:>13.2f}/s {f'{g / t[0]:.2f}' if g and t[0] else '-':>14}"
        print(line, flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "make":
        make(sys.argv[2])
    elif cmd == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), json.loads(sys.argv[6]) if len(sys.argv) > 6 else None)
    elif cmd == "compare":
        n = int(os.environ.get("LLAMA_CHECK_TOKENS", "16"))
        sys.exit(compare(sys.argv[2], sys.argv[3:], n))
    elif cmd == "bench":
        bench(sys.argv[2], sys.argv[3:] or ["F32:f32:one", "F16:f16:one", "Q8_0:f16:one", "Q4_0:f16:one"], int(os.environ.get("LLAMA_CHECK_TOKENS", "16")))

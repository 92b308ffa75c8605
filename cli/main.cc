// `pdserve`: parse the command line, hand off to a subcommand.
#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "loadgen/bench_command.h"
#include "rpc/tls_flags.h"

int main(int argc, char** argv) {
  using namespace pdserve::cli;
  CLI::App app{"pdserve: LLM serving with prefill/decode disaggregation (tool)"};
  app.require_subcommand(1);

  GenerateOptions gen;
  std::optional<uint64_t> seed;
  CLI::App* generate = app.add_subcommand(
      "generate",
      "Run one request in this process and print the generated ids on one line (and, for a "
      "text prompt, the text on the next)");
  generate
      ->add_option("--model", gen.model, "Hugging Face model directory, GGUF file or llama2.c .bin")
      ->required();
  CLI::Option_group* gen_prompt = generate->add_option_group("prompt", "The prompt (one)");
  gen_prompt->add_option("--prompt-ids", gen.prompt_ids, "Prompt token ids, e.g. 1,2,3")
      ->delimiter(',');
  gen_prompt->add_option("--prompt", gen.prompt, "Prompt text (the model's tokenizer encodes it)");
  gen_prompt->add_option("--chat", gen.chat, "A user message, sent with the chat template");
  gen_prompt->require_option(1);
  generate->add_option("--max-tokens", gen.stop.max_tokens, "Maximum new tokens")->default_val(64);
  generate->add_option("--temperature", gen.sampling.temperature, "0 = greedy")->default_val(0.0);
  generate->add_option("--top-k", gen.sampling.top_k, "Keep the k most likely tokens (0 = off)")
      ->default_val(0);
  generate->add_option("--top-p", gen.sampling.top_p, "Nucleus sampling mass (1 = off)")
      ->default_val(1.0);
  generate->add_option("--min-p", gen.sampling.min_p, "Drop tokens below min_p * p_max (0 = off)")
      ->default_val(0.0);
  generate->add_option("--repetition-penalty", gen.sampling.repetition_penalty, "1 = off")
      ->default_val(1.0);
  generate->add_option("--seed", seed, "Random seed (same seed, same tokens)");
  generate->add_option("--stop-ids", gen.stop.stop_token_ids, "Extra stop token ids, e.g. 5,6")
      ->delimiter(',');
  generate->add_flag("--ignore-eos", gen.stop.ignore_eos, "Do not stop at the model's EOS ids");
  generate->add_option("--threads", gen.threads, "Compute threads (0 = all cores)")->default_val(0);
  generate->add_option("--cpu-isa", gen.cpu_isa,
                       "CPU kernels: x86-64-v2 (SSE4.2), x86-64-v3 (AVX2) or x86-64-v4 "
                       "(AVX-512); default: the best this CPU supports");
  generate
      ->add_option("--device", gen.device,
                   "Where the model runs: cpu, or cuda / cuda:N (CUDA device N, compute "
                   "capability 8.0+)")
      ->capture_default_str();
  generate->add_flag("--enforce-eager", gen.enforce_eager,
                     "With --device cuda: no CUDA graphs for decode steps (every op runs as it "
                     "comes)");
  generate->add_flag("--dequantize-weights", gen.dequantize_weights,
                     "On the CPU: expand quantized GGUF weights to f32 at load instead of "
                     "keeping them quantized (slower; f32 numerics)");
  generate
      ->add_option("--kv-cache-dtype", gen.kv_cache_dtype,
                   "KV cache storage: bf16, f16, f32, or fp8 (e4m3) / int8 with an f16 scale "
                   "per 32 values (CPU only)")
      ->capture_default_str();
  generate->add_flag("-v,--verbose", gen.verbose, "Print the CPU kernels and timings to stderr");

  SynthOptions synth;
  CLI::App* synth_cmd =
      app.add_subcommand("synth", "Write a model with deterministic random weights");
  synth_cmd->add_option("--config", synth.config_path, "config.json (Hugging Face keys)")
      ->required()
      ->check(CLI::ExistingFile);
  synth_cmd->add_option("--out", synth.out_dir, "Output directory")->required();
  synth_cmd->add_option("--seed", synth.seed, "Weight seed")->default_val(0);

  DemoOptions demo;
  CLI::App* demo_cmd = app.add_subcommand(
      "demo", "Start router + prefill + decode on localhost, stream one answer, stop them");
  demo_cmd->add_option("--model", demo.model,
                       "Model (default: SmolLM2-135M-Instruct when scripts/fetch-model.sh has "
                       "fetched it, else stories260K, else a synthetic model)");
  demo_cmd->add_option("--prompt", demo.prompt, "The user's message (models with a tokenizer)")
      ->capture_default_str();
  demo_cmd->add_option("--max-tokens", demo.max_tokens, "Maximum new tokens")->default_val(64);
  demo_cmd->add_option("--threads", demo.threads, "Compute threads per worker (0 = 1 each)")
      ->default_val(0);
  demo_cmd->add_flag("--dequantize-weights", demo.dequantize_weights,
                     "The workers expand quantized GGUF weights to f32 at load (slower; f32 "
                     "numerics)");
  demo_cmd
      ->add_option("--kv-cache-dtype", demo.kv_cache_dtype,
                   "The workers' KV cache storage: bf16, f16, f32, fp8 or int8")
      ->capture_default_str();
  demo_cmd->add_flag("--serve", demo.serve,
                     "Keep serving until Ctrl-C (SIGINT) or SIGTERM instead of answering a prompt");
  demo_cmd
      ->add_option("--router-port", demo.router_port,
                   "With --serve: the router's port on 127.0.0.1 (0 = any free port)")
      ->default_val(50051)
      ->check(CLI::Range(0, 65535));
  demo_cmd
      ->add_option("--openai-port", demo.openai_port,
                   "With --serve: the router's OpenAI-compatible API's port on 127.0.0.1 (0 = any "
                   "free port)")
      ->default_val(8000)
      ->check(CLI::Range(0, 65535));

  KvInfoOptions kv;
  CLI::App* kv_cmd = app.add_subcommand(
      "kv-info", "Print a model's KV cache format and its bytes per token and per block");
  CLI::Option_group* kv_source = kv_cmd->add_option_group("source", "What to describe (one)");
  kv_source->add_option("--model", kv.model,
                        "Hugging Face model directory, GGUF file or llama2.c .bin");
  kv_source->add_option("--config", kv.config_path, "config.json (Hugging Face keys)");
  kv_source->require_option(1);
  kv_cmd
      ->add_option("--dtype", kv.dtype,
                   "KV storage dtype (a worker's --kv-cache-dtype): bf16, f16, f32, fp8 or int8")
      ->default_val("bf16");
  kv_cmd
      ->add_option("--block-size", kv.tokens_per_block,
                   "Tokens per block (default: 16 for MHA/GQA/MQA, 64 for MLA)")
      ->check(CLI::Range(1, 1 << 20));
  kv_cmd->add_flag("--json", kv.json, "Print one JSON object");

  ClientOptions client;
  std::optional<uint64_t> client_seed;
  CLI::App* client_cmd = app.add_subcommand(
      "client", "Call a router's Generate (streaming) or Complete and print the answer");
  pdserve::rpc::AddTlsFlags(*client_cmd, client.tls);
  client_cmd->add_option("--router", client.router, "Router address")
      ->default_val("localhost:50051");
  CLI::Option_group* client_prompt = client_cmd->add_option_group("prompt", "The prompt (one)");
  client_prompt
      ->add_option("--prompt-ids", client.prompt_ids, "Prompt token ids, e.g. 1,2,3 (no BOS added)")
      ->delimiter(',');
  client_prompt->add_option("--prompt", client.prompt, "Prompt text (the router tokenizes it)");
  client_prompt->add_option("--chat", client.chat,
                            "A user message, sent with the model's chat template");
  client_prompt->require_option(1);
  client_cmd->add_option("--system", client.system, "A system message before --chat");
  client_cmd->add_option("--stop", client.stop_strings, "Stop string (repeatable)");
  client_cmd->add_flag("--ids", client.ids, "Print token ids instead of text");
  client_cmd->add_option("--max-tokens", client.stop.max_tokens, "Maximum new tokens")
      ->default_val(16);
  CLI::Option* c_temp = client_cmd->add_option("--temperature", client.sampling.temperature,
                                               "0 = greedy (server default 1)");
  CLI::Option* c_top_k = client_cmd->add_option("--top-k", client.sampling.top_k, "0 = off");
  CLI::Option* c_top_p = client_cmd->add_option("--top-p", client.sampling.top_p, "1 = off");
  CLI::Option* c_min_p = client_cmd->add_option("--min-p", client.sampling.min_p, "0 = off");
  CLI::Option* c_rep =
      client_cmd->add_option("--repetition-penalty", client.sampling.repetition_penalty, "1 = off");
  client_cmd->add_option("--seed", client_seed, "Random seed");
  client_cmd->add_option("--stop-ids", client.stop.stop_token_ids, "Extra stop ids")
      ->delimiter(',');
  client_cmd->add_flag("--ignore-eos", client.stop.ignore_eos, "Do not stop at EOS");
  client_cmd->add_option("--request-id", client.request_id, "Request id (default: the router's)");
  client_cmd->add_flag("--unary", client.unary, "Call Complete instead of Generate");
  client_cmd->add_option("--timeout", client.timeout_s, "Deadline in seconds")->default_val(120);

  pdserve::loadgen::BenchOptions bench;
  bool bench_no_plots = false;
  CLI::App* bench_cmd = app.add_subcommand(
      "bench",
      "Load a router with Generate streams; report TTFT, TPOT/ITL, throughput, goodput under SLOs "
      "and the server's time split (printed, report.json, requests.jsonl, plots)");
  pdserve::rpc::AddTlsFlags(*bench_cmd, bench.tls);
  bench_cmd->add_option("--router", bench.router, "Router address")->default_val("localhost:50051");
  bench_cmd->add_option("--dataset", bench.dataset,
                        "ShareGPT JSON, or JSONL of {\"prompt\": text or [ids], \"output_len\": N} "
                        "(default: synthetic prompts of random ids that ignore EOS)");
  bench_cmd->add_option("--input-len", bench.input_len,
                        "Synthetic prompts' tokens: N, or MIN:MAX drawn uniformly (default 128)");
  bench_cmd->add_option("--output-len", bench.output_len,
                        "New tokens a request: N or MIN:MAX (default 128; with --dataset, "
                        "overrides the file's lengths)");
  bench_cmd->add_option("--num-requests", bench.num_requests, "Measured requests per run")
      ->default_val(100);
  bench_cmd->add_option("--concurrency", bench.concurrency,
                        "Closed loop: requests in flight (the default, at 1)");
  bench_cmd->add_option("--rate", bench.rate,
                        "Open loop: requests a second, gamma-distributed gaps (inf: all at once)");
  bench_cmd
      ->add_option("--burstiness", bench.burstiness,
                   "Open loop: the gaps' gamma shape (1 = Poisson, < 1 burstier)")
      ->default_val(1.0);
  bench_cmd->add_option("--seed", bench.seed, "Seed of prompts, lengths and arrivals")
      ->default_val(0);
  bench_cmd->add_option("--warmup", bench.warmup, "Requests sent first and left out of the report")
      ->default_val(1);
  bench_cmd->add_option(
      "--slo", bench.slo,
      "Objectives for goodput, e.g. ttft=200ms,tpot=50ms[,e2e=2s] (ms if no unit)");
  bench_cmd
      ->add_option("--slo-attainment", bench.slo_attainment,
                   "Fraction of a sweep level's requests that must meet every SLO")
      ->default_val(0.9);
  bench_cmd->add_option("--sweep", bench.sweep,
                        "Run each level and report the highest meeting the SLOs: "
                        "concurrency=1,2,4,8 or rate=1,2,4");
  bench_cmd->add_option("--out", bench.out_dir,
                        "Output directory (default: pdserve-bench-YYYYmmdd-HHMMSS here)");
  bench_cmd->add_option("--python", bench.python,
                        "Python with matplotlib for the plots (default: $PDSERVE_PYTHON, else "
                        "the source tree's .venv, else python3)");
  bench_cmd->add_flag("--no-plots", bench_no_plots, "Write no plots");
  bench_cmd->add_option("--request-timeout", bench.request_timeout_s, "Each stream's deadline (s)")
      ->default_val(600);
  bench_cmd->add_option("--temperature", bench.temperature, "Sampling temperature (0 = greedy)")
      ->default_val(0.0);
  bench_cmd->add_flag("--ignore-eos", bench.ignore_eos,
                      "Dataset requests ignore EOS too (synthetic ones always do)");

  CLI11_PARSE(app, argc, argv);
  bench.plots = !bench_no_plots;
  bench.command_line.assign(argv, argv + argc);
  gen.sampling.seed = seed;
  client.sampling.seed = client_seed;
  client.temperature_set = c_temp->count() > 0;
  client.top_k_set = c_top_k->count() > 0;
  client.top_p_set = c_top_p->count() > 0;
  client.min_p_set = c_min_p->count() > 0;
  client.repetition_penalty_set = c_rep->count() > 0;
  client.ids = client.ids || !client.prompt_ids.empty();
  if (client_cmd->parsed()) return RunClient(client);
  if (generate->parsed()) return RunGenerate(gen);
  if (synth_cmd->parsed()) return RunSynth(synth);
  if (demo_cmd->parsed()) return RunDemo(demo);
  if (kv_cmd->parsed()) return RunKvInfo(kv);
  if (bench_cmd->parsed()) return pdserve::loadgen::RunBench(bench);
  return 1;
}

"""FLOPs and peaks: the FLOP formula by hand, the data sheets' peaks, the measured one."""

from gptjax.bench import flops
from gptjax.model import GPT2Config


def test_train_flops_of_gpt2_by_hand():
    # gpt2: D = 768, F = 3072, L = 12; batch 8 x 128 = 1024 tokens; a 9-label token head.
    # Matmul multiply-adds per block and token:
    #   c_attn 768*2304 = 1,769,472   attn.c_proj 768*768 = 589,824
    #   c_fc   768*3072 = 2,359,296   mlp.c_proj 3072*768 = 2,359,296      sum 7,077,888
    # FLOPs: 2 * 7,077,888 * 12 layers * 1024 tokens                  = 173,946,175,488
    # causal attention: 2 * T^2 * D = 2 * 16,384 * 768 = 25,165,824 per block and row,
    #   * 12 layers * 8 rows                                          =   2,415,919,104
    # classifier: 2 * 768 * 9 per token * 1024 tokens                 =      14,155,776
    # forward                                                         = 176,376,250,368
    # train step: 3 * forward                                         = 529,128,751,104
    gpt2 = GPT2Config.named("gpt2")
    assert flops.forward_flops(gpt2, "token_classification", 9, 8, 128) == 176_376_250_368
    assert flops.train_flops(gpt2, "token_classification", 9, 8, 128) == 529_128_751_104
    # A sequence head runs on one token a row: 2 * 768 * 2 * 8 rows = 24,576.
    assert flops.forward_flops(gpt2, "sequence_classification", 2, 8, 128) == (
        173_946_175_488 + 2_415_919_104 + 24_576)
    # Only the language-model head pays for the vocabulary: 2 * 768 * 50,257 * 1024 tokens.
    assert flops.forward_flops(gpt2, "causal_lm", None, 8, 128) == (
        173_946_175_488 + 2_415_919_104 + 2 * 768 * 50_257 * 1024)


def test_datasheet_peaks_match_device_kinds():
    peak = lambda kind: flops.datasheet_peak(kind)[0]  # noqa: E731
    assert peak("NVIDIA H200") == 989.5e12
    assert peak("NVIDIA H100 80GB HBM3") == 989.5e12
    assert peak("NVIDIA H100 PCIe") == 756.5e12
    assert peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak("TPU v4") == 275e12
    assert peak("TPU v5 lite") == 197e12  # v5e, not v5p's "TPU v5"
    assert peak("TPU v5") == 459e12
    assert peak("TPU v5p") == 459e12
    assert peak("TPU v6 lite") == 918e12
    assert flops.datasheet_peak("cpu") is None


def test_peak_probe_measures_a_matmul():
    probe = flops.peak_probe(n=64, repeats=2)
    assert 0 < probe() < 1e15
    assert flops.peak_flops("cpu", "cpu", "float32")[2] is not None
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "gpu", "bfloat16")[2] is None

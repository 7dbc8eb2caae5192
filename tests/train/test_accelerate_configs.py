"""Accelerate launch configs: every shipped YAML loads, says what it claims, and the CPU one runs.

The GPU configs (DDP, FSDP, DeepSpeed) are checked without launching them: their fields, the
environment ``accelerate launch`` would export from them, and (FSDP) the layers its auto-wrap
policy picks in the tiny models. The two-process CPU config is launched for real.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import DistributedType

from radixpert.paths import configs_dir

CONFIGS = configs_dir("accelerate")
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))

# name: (distributed_type, num_processes, num_machines, mixed_precision), as the README states.
EXPECTED = {
    # MULTI_GPU launcher + ACCELERATE_USE_CPU: the only way accelerate 1.15 spawns CPU workers
    # without mpirun (see the YAML); the workers themselves run as MULTI_CPU over gloo.
    "cpu_ddp_2proc": (DistributedType.MULTI_GPU, 2, 1, "no"),
    "ddp": (DistributedType.MULTI_GPU, 8, 1, "bf16"),
    "ddp_multinode": (DistributedType.MULTI_GPU, 16, 2, "bf16"),
    "fsdp": (DistributedType.FSDP, 8, 1, "bf16"),
    "deepspeed_zero2": (DistributedType.DEEPSPEED, 8, 1, "bf16"),
    "deepspeed_zero3": (DistributedType.DEEPSPEED, 8, 1, "bf16"),
}


def _load(name: str) -> ClusterConfig:
    return load_config_from_file(str(CONFIGS / f"{name}.yaml"))


def _launch_env(argv: list[str]) -> dict[str, str]:
    """The environment ``accelerate launch ARGV x.py`` would give its workers (nothing runs)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args([*argv, "x.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        # launch_command sets this between validation and the env; mirror it.
        args.deepspeed_fields_from_accelerate_config = list(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_every_shipped_config_is_documented() -> None:
    assert {p.stem for p in SHIPPED} == set(EXPECTED)
    readme = (CONFIGS / "README.md").read_text(encoding="utf-8")
    for path in SHIPPED:
        assert f"{path.name}" in readme
        head = path.read_text(encoding="utf-8").splitlines()[:12]
        assert head[0].startswith("# "), f"{path.name} must open with what it is for"
        assert any(f"radixpert config path accelerate/{path.stem}" in line for line in head)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_config_loads_with_documented_topology(path: Path) -> None:
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    kind, processes, machines, precision = EXPECTED[path.stem]
    assert config.distributed_type == kind
    assert config.num_processes == processes
    assert config.num_machines == machines
    assert config.mixed_precision == precision
    assert config.machine_rank == 0
    assert config.use_cpu is (path.stem == "cpu_ddp_2proc")


def test_multinode_config_names_the_main_process() -> None:
    config = _load("ddp_multinode")
    assert config.main_process_ip and config.main_process_port == 29500
    # accelerate refuses a main port in use on this machine: take a free one for the check.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = _launch_env(
        ["--config_file", str(CONFIGS / "ddp_multinode.yaml"), "--main_process_port", port]
    )
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp_config_is_full_shard_fsdp2() -> None:
    fsdp = _load("fsdp").fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is True  # FSDP2's FULL_SHARD
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # use the model's _no_split_modules
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp["fsdp_activation_checkpointing"] is True
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
    env = _launch_env(["--config_file", str(CONFIGS / "fsdp.yaml")])
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "2"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"


# tiny builder, extra launch flags the README documents for it, layer classes to be wrapped
WRAP_CASES = {
    "mllama": (
        "radixpert.models.mllama:tiny_mllama",
        [],
        {
            "MllamaSelfAttentionDecoderLayer",
            "MllamaCrossAttentionDecoderLayer",
            "MllamaVisionEncoderLayer",
        },
    ),
    "llava": (
        "radixpert.models.llava:tiny_llava",
        ["--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer,CLIPEncoderLayer"],
        {"LlamaDecoderLayer", "CLIPEncoderLayer"},
    ),
    "onevision": (
        "radixpert.models.onevision:tiny_onevision",
        ["--fsdp_transformer_layer_cls_to_wrap", "Qwen2DecoderLayer,SiglipEncoderLayer"],
        {"Qwen2DecoderLayer", "SiglipEncoderLayer"},
    ),
}


@pytest.mark.parametrize("family", sorted(WRAP_CASES))
def test_fsdp_auto_wrap_finds_the_layers(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    target, extra, wanted = WRAP_CASES[family]
    env = _launch_env(["--config_file", str(CONFIGS / "fsdp.yaml"), *extra])
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing

    module, name = target.split(":")
    model = getattr(importlib.import_module(module), name)()
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = {type(m).__name__ for m in model.modules() if policy(m)}
    assert wrapped == wanted


def test_fsdp_without_override_fails_loudly_on_llava(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLaVA's _no_split_modules names CLIPTextEmbeddings, which it does not contain."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from radixpert.models.llava import tiny_llava

    for key, value in _launch_env(["--config_file", str(CONFIGS / "fsdp.yaml")]).items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="CLIPTextEmbeddings"):
        fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(), tiny_llava())


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config_stage_and_no_conflict_with_the_recipe(stage: int) -> None:
    name = f"deepspeed_zero{stage}"
    ds = _load(name).deepspeed_config
    assert ds["zero_stage"] == stage
    assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
    assert ds["zero3_init_flag"] is (stage == 3)
    if stage == 3:
        assert ds["zero3_save_16bit_model"] is True
    # The recipe's grad_accum / grad_clip reach DeepSpeed through Accelerator; a value here
    # would be exported as ACCELERATE_GRADIENT_* and override the recipe's (see the YAML).
    assert "gradient_accumulation_steps" not in ds
    assert "gradient_clipping" not in ds
    env = _launch_env(["--config_file", str(CONFIGS / f"{name}.yaml")])
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(stage)
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env
    assert "ACCELERATE_GRADIENT_CLIPPING" not in env


def test_pinned_accumulation_would_override_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the DeepSpeed configs leave gradient_accumulation_steps out."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    try:
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=4)
        assert accelerator.gradient_accumulation_steps == 1
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # leave no state to later tests


WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator

    accelerator = Accelerator()
    assert accelerator.num_processes == 2, accelerator.num_processes
    assert accelerator.distributed_type == "MULTI_CPU", accelerator.distributed_type
    model = accelerator.prepare(torch.nn.Linear(4, 2))
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel), type(model)
    value = torch.tensor([accelerator.process_index + 1.0])
    total = accelerator.reduce(value, "sum")
    if accelerator.is_main_process:
        result = {
            "world_size": dist.get_world_size(),
            "backend": dist.get_backend(),
            "state_backend": accelerator.state.backend,
            "sum": total.item(),
        }
        with open(sys.argv[1], "w", encoding="utf-8") as f:
            json.dump(result, f)
    accelerator.wait_for_everyone()
    """
)


@pytest.mark.slow
def test_cpu_two_process_config_launches(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "cpu_ddp_2proc.yaml"),
        "--main_process_port",
        "0",  # pick a free port, so parallel test runs do not collide
        str(script),
        str(out),
    ]
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["world_size"] == 2
    assert result["backend"] == result["state_backend"] == "gloo"
    assert result["sum"] == 3.0
    print(f"two-process CPU launch took {elapsed:.1f} s")

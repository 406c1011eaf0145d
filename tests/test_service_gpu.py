"""The service on a GPU backend (a TorchScript file run by the torch backend): every frame
delivered, the model's identity and the GPU memory in use among the metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

import xinfer_stream as xs
from xinfer_stream.service import load_config

from .test_gpu_runtime import small_model
from .test_service_run import FRAMES, camera, lines_by_camera, make_assets, samples

pytestmark = pytest.mark.gpu


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_the_service_runs_a_torch_model_on_the_gpu_and_reports_its_memory(
        torch: Any, tmp_path: Path) -> None:
    make_assets(tmp_path)
    torch.jit.save(torch.jit.script(small_model(torch).eval()), str(tmp_path / "net.pt"))
    out = tmp_path / "results.jsonl"
    config_file = tmp_path / "serve.toml"
    config_file.write_text('[model]\npath = "net.pt"\npreprocess = { size = [32, 48] }\n\n'
                           '[batching]\nmax_batch = 4\n\n'
                           '[postprocess]\nkind = "classify"\ntop = 2\n\n'
                           + camera("a") + camera("b") + f'\n[[sinks]]\nkind = "jsonl"\npath = "{out}"\n')

    async def main() -> tuple[xs.ServiceSummary, str]:
        async with xs.Service(load_config(config_file)) as service:
            summary = await service.run(until_idle=True)
            return summary, generate_latest(service.metrics.registry).decode()

    summary, page = asyncio.run(main())
    assert lines_by_camera(out) == {"a": list(range(FRAMES["a"])), "b": list(range(FRAMES["b"]))}
    assert summary.lost == 0
    assert samples(page, "xinfer_gpu_memory_used_bytes")[""] > 0
    assert 'device="cuda"' in page and 'backend="torch"' in page

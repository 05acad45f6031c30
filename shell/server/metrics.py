"""Prometheus metrics of a served kernel: requests by status, queue depth, TTFT and tokens/s histograms
per model and driver, loaded modules, memfs sizes, remote nodes down, the process's RSS and CPU
(what kernel/alerts/prometheus.py's rules read), and per tenant its tokens, requests,
throttles and denials (prometheus-client, own registry). Tenant labels are bounded: the kernel's tenant
table counts at most MAX_TENANTS names and the rest as "other"."""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily

#: (metric name, help, usage fields summed into it, label for the field or None)
TENANT_METRICS = (
    ("llmos_tenant_tokens", "Tokens served per tenant, by kind (prompt, completion)",
     {"prompt": "prompt_tokens", "completion": "completion_tokens"}),
    ("llmos_tenant_requests", "Requests ended per tenant", {None: "requests"}),
    ("llmos_tenant_throttled", "Requests refused by a tenant's quota (429)", {None: "throttled"}),
    ("llmos_tenant_denied", "Requests refused by isolation (403), audited", {None: "denied"}),
)


class _TenantCollector:
    def __init__(self, kernel) -> None:
        self.kernel = kernel

    def collect(self):
        usage = self.kernel.tenants.usage()
        for name, text, fields in TENANT_METRICS:
            labels = ["tenant", "kind"] if None not in fields else ["tenant"]
            family = CounterMetricFamily(name, text, labels=labels)
            for tenant, counts in sorted(usage.items()):
                for kind, field in fields.items():
                    family.add_metric([tenant, kind] if kind else [tenant], counts[field])
            yield family


class Metrics:
    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmos_requests", "Requests by final status", ["model", "status"], registry=r)
        self.ttft = Histogram("llmos_time_to_first_token_seconds", "Time to first token", ["model", "driver"],
                              registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.tps = Histogram("llmos_tokens_per_second", "Decode speed per request", ["model", "driver"], registry=r,
                             buckets=(1, 5, 10, 25, 50, 100, 200, 400))
        self.queue = Gauge("llmos_queue_depth", "Waiting requests", ["model", "driver"], registry=r)
        self.running = Gauge("llmos_running_requests", "Running requests", ["model", "driver"], registry=r)
        self.modules = Gauge("llmos_loaded_modules", "Loaded adapter modules", registry=r)
        self.memfs = Gauge("llmos_memfs_files", "Files per memfs volume", ["volume"], registry=r)
        self.nodes_down = Gauge("llmos_remote_nodes_down", "Remote nodes marked down after failures", ["model"],
                                registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes and CPU: what the rss_mb alert reads
        self._drivers: dict[str, str] = {}
        r.register(_TenantCollector(kernel))

    def submitted(self, handle) -> None:
        self._drivers[handle.id] = next((e["driver"] for e in self.kernel.engines()
                                         if e["model"] == handle.request.model), "?")

    def finished(self, handle) -> None:
        driver = self._drivers.pop(handle.id, None)
        if driver is None:  # counted already
            return
        req = handle.request
        self.requests.labels(req.model, req.status.name.lower()).inc()
        m = req.metrics
        if m.ttft is not None:
            self.ttft.labels(req.model, driver).observe(m.ttft)
        if m.tokens_per_second is not None:
            self.tps.labels(req.model, driver).observe(m.tokens_per_second)

    def render(self) -> tuple[bytes, str]:
        for e in self.kernel.engines():
            self.queue.labels(e["model"], e["driver"]).set(e["waiting"])
            self.running.labels(e["model"], e["driver"]).set(e["running"])
            if "nodes" in e:
                self.nodes_down.labels(e["model"]).set(sum(not n["healthy"] for n in e["nodes"]))
        self.modules.set(len(self.kernel.lsmod()))
        if self.kernel.mem_opened:
            for v in self.kernel.mem.volumes():
                self.memfs.labels(v["name"]).set(v["files"])
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

"""Finding every replica behind a Kubernetes Service, for the convergence check.

Through a Service you cannot pick a pod, but the check must ask each replica. The
Service's EndpointSlices list the ready pods; this reads them with the official
``kubernetes`` client, in-cluster (the Job's ServiceAccount) or from a kubeconfig.
"""

from __future__ import annotations

from typing import Any


def pod_urls(api: Any, namespace: str, service: str, port_name: str = "http") -> list[str]:
    """``http://<pod ip>:<port>`` of every ready endpoint of ``service``, sorted.

    ``api`` is a ``kubernetes.client.DiscoveryV1Api``.
    """
    slices = api.list_namespaced_endpoint_slice(namespace, label_selector=f"kubernetes.io/service-name={service}")
    urls = set()
    for endpoint_slice in slices.items:
        ports = [p.port for p in endpoint_slice.ports or [] if p.name == port_name]
        if not ports:
            continue
        for endpoint in endpoint_slice.endpoints or []:
            if endpoint.conditions is not None and endpoint.conditions.ready is False:
                continue
            for address in endpoint.addresses:
                host = f"[{address}]" if ":" in address else address
                urls.add(f"http://{host}:{ports[0]}")
    return sorted(urls)


def discovery_api(host: str | None = None) -> Any:
    """A DiscoveryV1Api: in-cluster config, else the kubeconfig, else ``host`` (tests)."""
    from kubernetes import client, config

    if host is not None:
        configuration = client.Configuration()
        configuration.host = host
        return client.DiscoveryV1Api(client.ApiClient(configuration))
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.DiscoveryV1Api()

// Reads a JSON array of Kubernetes objects on stdin; prints one line per invalid object.
// Exit 0 when all are valid. The models' JSON schemas are generated from the CRDs.
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1";

const models = { ServiceMonitor, PrometheusRule, HTTPRoute };
let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const object of JSON.parse(input)) {
  const Model = models[object.kind];
  if (!Model) {
    console.log(`${object.kind}: no schema`);
    failed += 1;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`${object.kind}/${object.metadata.name}: valid`);
  } catch (error) {
    console.log(`${object.kind}/${object.metadata.name}: ${error.message}`);
    failed += 1;
  }
}
process.exit(failed ? 1 : 0);

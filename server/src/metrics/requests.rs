//! Requests by gRPC method and status code, and their latency. The method
//! label is a full path (`/rekey.v1.Secrets/GetSecretValue`) taken from
//! the services' own descriptors, never from the request: a path the
//! server does not serve counts as `other`, so no client can add series.
//! Nothing about the request's content (a secret's name) is kept.

use super::exposition::{Exposition, Histogram};
use crate::service::secrets::code_name;
use prost::Message as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The method label of a path no service serves.
const OTHER: &str = "other";

/// The gRPC status codes, 0 to 16.
const CODES: usize = 17;

/// A method's place in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodId(usize);

#[derive(Debug)]
pub struct RequestMetrics {
    /// Sorted full paths, then [`OTHER`].
    methods: Vec<String>,
    /// Per method, a counter per status code.
    calls: Vec<[AtomicU64; CODES]>,
    durations: Vec<Histogram>,
}

impl RequestMetrics {
    /// The methods of every service in `descriptor_sets` (encoded
    /// `FileDescriptorSet`s, as the reflection service is given).
    pub fn for_services(descriptor_sets: &[&[u8]]) -> anyhow::Result<Self> {
        let mut methods = Vec::new();
        for encoded in descriptor_sets {
            let set = prost_types::FileDescriptorSet::decode(*encoded)?;
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    let service_name = match package {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        methods.push(format!("/{service_name}/{}", method.name()));
                    }
                }
            }
        }
        Ok(Self::new(methods))
    }

    pub fn new(mut methods: Vec<String>) -> Self {
        methods.sort();
        methods.dedup();
        methods.push(OTHER.to_owned());
        Self {
            calls: methods.iter().map(|_| Default::default()).collect(),
            durations: methods
                .iter()
                .map(|_| Histogram::new(super::DURATION_BUCKETS))
                .collect(),
            methods,
        }
    }

    /// The method a request path names, or `other`.
    pub fn method(&self, path: &str) -> MethodId {
        let known = &self.methods[..self.methods.len() - 1];
        MethodId(
            known
                .binary_search_by(|method| method.as_str().cmp(path))
                .unwrap_or(known.len()),
        )
    }

    /// One finished call.
    pub fn record(&self, method: MethodId, code: tonic::Code, elapsed: Duration) {
        let code = (code as usize).min(CODES - 1);
        self.calls[method.0][code].fetch_add(1, Relaxed);
        self.durations[method.0].observe(elapsed.as_secs_f64());
    }

    /// The series that have counted something (a method never called has
    /// none, as with any Prometheus client).
    pub fn write(&self, page: &mut Exposition) {
        page.family(
            "rekey_requests_total",
            "counter",
            "gRPC calls answered, by method and status code.",
        );
        for (method, counters) in self.methods.iter().zip(&self.calls) {
            for (code, counter) in counters.iter().enumerate() {
                let count = counter.load(Relaxed);
                if count > 0 {
                    let name = code_name(tonic::Code::from_i32(code as i32));
                    page.sample(
                        "rekey_requests_total",
                        &[("method", method), ("code", name)],
                        count,
                    );
                }
            }
        }
        page.family(
            "rekey_request_duration_seconds",
            "histogram",
            "Time from a call's arrival to its status, by method (a stream's whole life).",
        );
        for (method, histogram) in self.methods.iter().zip(&self.durations) {
            if histogram.count() > 0 {
                page.histogram(
                    "rekey_request_duration_seconds",
                    &[("method", method)],
                    histogram,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_the_descriptors_and_unknown_paths_are_other() {
        let metrics =
            RequestMetrics::for_services(&[rekey_shared::proto::FILE_DESCRIPTOR_SET]).unwrap();
        let get = metrics.method("/rekey.v1.Secrets/GetSecretValue");
        assert_ne!(get, metrics.method(OTHER));
        assert_eq!(
            metrics.method("/rekey.v1.Secrets/prod/db/orders"),
            metrics.method("/nothing")
        );
        metrics.record(get, tonic::Code::NotFound, Duration::from_millis(2));
        metrics.record(
            metrics.method("/rekey.v1.Secrets/prod/db/orders"),
            tonic::Code::Unimplemented,
            Duration::from_millis(1),
        );
        let mut page = Exposition::default();
        metrics.write(&mut page);
        let text = page.finish();
        assert!(
            text.contains(
                "rekey_requests_total{method=\"/rekey.v1.Secrets/GetSecretValue\",code=\"NOT_FOUND\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("rekey_requests_total{method=\"other\",code=\"UNIMPLEMENTED\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("prod/db"), "{text}");
        assert!(
            text.contains(
                "rekey_request_duration_seconds_bucket{method=\"/rekey.v1.Secrets/GetSecretValue\",le=\"0.0025\"} 1\n"
            ),
            "{text}"
        );
    }
}

//! Replayed clusterings are checked for what a run relies on: step indices once each and at a
//! full step of the run, every cluster non-empty, every proxy inside its cluster.

use std::collections::HashMap;
use std::path::PathBuf;

use ndarray::{ArrayD, IxDyn};
use resca_reference::cache::{check_replay_steps, read_clusterings};
use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors};

/// A replay file of one row of 4 tokens in 2 clusters.
fn replay(dir: &tempfile::TempDir, steps: &[i64], labels: [i64; 4], proxies: [i64; 2]) -> PathBuf {
    let s = steps.len();
    let ints =
        |shape: &[usize], values: Vec<i64>| OutTensor::I64(ArrayD::from_shape_vec(IxDyn(shape), values).unwrap());
    let path = dir.path().join(format!("replay{}.safetensors", steps.len()));
    write_safetensors(
        &path,
        vec![
            ("clus.cluster_step".into(), ints(&[s], steps.to_vec())),
            ("clus.cluster_indices".into(), ints(&[s, 1, 4], labels.repeat(s))),
            ("clus.proxy_indices".into(), ints(&[s, 1, 2], proxies.repeat(s))),
        ],
        HashMap::new(),
    )
    .unwrap();
    path
}

fn read(path: &PathBuf) -> Result<Vec<resca_reference::cache::ClusteringRecord>, String> {
    read_clusterings(&SafetensorsFile::open(path).unwrap(), 1, 4, 2).map_err(|e| e.to_string())
}

#[test]
fn a_valid_replay_file_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let records = read(&replay(&dir, &[49, 44], [0, 1, 1, 0], [3, 2])).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].rows[0].labels, vec![0, 1, 1, 0]);
    check_replay_steps("f", &records, &[49, 48, 44, 39]).unwrap();
}

#[test]
fn an_empty_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let error = read(&replay(&dir, &[49], [0, 0, 0, 0], [1, 2])).unwrap_err();
    assert!(error.contains("step 49, row 0: cluster 1 has no token"), "{error}");
}

#[test]
fn a_proxy_outside_its_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let error = read(&replay(&dir, &[49], [0, 1, 1, 0], [1, 2])).unwrap_err();
    assert!(
        error.contains("names token 1 as the proxy of cluster 0, but that token is in cluster 1"),
        "{error}"
    );
}

#[test]
fn a_step_recorded_twice_or_at_no_full_step_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let error = read(&replay(&dir, &[49, 49], [0, 1, 1, 0], [0, 1])).unwrap_err();
    assert!(error.contains("holds step 49 twice"), "{error}");
    let records = read(&replay(&dir, &[37], [0, 1, 1, 0], [0, 1])).unwrap();
    let error = check_replay_steps("r.safetensors", &records, &[49, 48, 43])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("r.safetensors: the clustering recorded at step 37 matches no full step of this run"),
        "{error}"
    );
}

#[test]
fn a_replay_file_without_records_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let error = read(&replay(&dir, &[], [0, 1, 1, 0], [0, 1])).unwrap_err();
    assert!(
        error.contains("`clus.cluster_step` has shape [0]") && error.contains("empty"),
        "{error}"
    );
}

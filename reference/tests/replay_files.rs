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

/// A ClusCa choices file of 1 row, 4 tokens, 2 clusters and two fresh records.
fn clusca_choices(dir: &tempfile::TempDir, init: [i64; 2], layers: [i64; 2], fresh: [i64; 4]) -> PathBuf {
    let ints =
        |shape: &[usize], values: Vec<i64>| OutTensor::I64(ArrayD::from_shape_vec(IxDyn(shape), values).unwrap());
    let path = dir.path().join("choices.safetensors");
    write_safetensors(
        &path,
        vec![
            ("clus.init_indices".into(), ints(&[1, 1, 2], init.to_vec())),
            ("clus.fresh_step".into(), ints(&[2], vec![47, 47])),
            ("clus.fresh_layer".into(), ints(&[2], layers.to_vec())),
            ("clus.fresh_indices".into(), ints(&[2, 1, 2], fresh.to_vec())),
        ],
        HashMap::new(),
    )
    .unwrap();
    path
}

fn read_choices(path: &PathBuf) -> Result<resca_reference::cache::clusca::RecordedChoices, String> {
    resca_reference::cache::clusca::read_choices(&SafetensorsFile::open(path).unwrap(), 1, 4, 2, 2)
        .map_err(|e| e.to_string())
}

#[test]
fn clusca_choices_read_back_and_name_what_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let choices = read_choices(&clusca_choices(&dir, [3, 0], [0, 1], [1, 2, 0, 3])).unwrap();
    assert_eq!(choices.init_tokens, vec![vec![3, 0]]);
    assert_eq!((choices.fresh[1].step_index, choices.fresh[1].block), (47, 1));
    assert_eq!(choices.fresh[1].tokens, vec![vec![0, 3]]);
    // Token 0 of cluster 1 belongs to cluster 0 under these labels: its pair names cluster 0.
    assert_eq!(
        choices.fresh_members(47, 1, 0, &[0, 1, 1, 1]),
        Some(vec![(0, 0), (1, 3)])
    );

    let error = read_choices(&clusca_choices(&dir, [4, 0], [0, 1], [1, 2, 0, 3])).unwrap_err();
    assert!(
        error.contains("`clus.init_indices` holds token 4, outside 0..4"),
        "{error}"
    );
    let error = read_choices(&clusca_choices(&dir, [3, 0], [0, 1], [1, -1, 0, 3])).unwrap_err();
    assert!(
        error.contains("`clus.fresh_indices` holds token -1, outside 0..4"),
        "{error}"
    );
    let error = read_choices(&clusca_choices(&dir, [3, 0], [0, 2], [1, 2, 0, 3])).unwrap_err();
    assert!(
        error.contains("`clus.fresh_layer` holds block 2, outside 0..2"),
        "{error}"
    );
    assert!(error.contains("choices.safetensors"), "{error}");
}

#[test]
fn a_cluster_or_proxy_index_out_of_range_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (labels, bad) in [([0, 2, 1, 0], 2), ([0, 1, -1, 0], -1)] {
        let error = read(&replay(&dir, &[49], labels, [0, 1])).unwrap_err();
        assert!(
            error.contains(&format!("`clus.cluster_indices` holds cluster {bad}, outside 0..2")),
            "{error}"
        );
    }
    for (proxies, bad) in [([0, 4], 4), ([-1, 1], -1)] {
        let error = read(&replay(&dir, &[49], [0, 1, 1, 0], proxies)).unwrap_err();
        assert!(
            error.contains(&format!("`clus.proxy_indices` holds token {bad}, outside 0..4")),
            "{error}"
        );
        assert!(error.contains("replay1.safetensors"), "{error}");
    }
}

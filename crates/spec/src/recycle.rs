//! Token Recycling (Luo et al. 2024, "Turning Trash into Treasure"): every
//! verification pass computes the target's full distribution after each draft node,
//! and its runners-up are usually thrown away. Kept as an adjacency list (token → its
//! top-k successors, overwritten each time the token is verified) they make a good
//! draft source: the draft tree is a breadth-first expansion of the last token along
//! a static template of (parent, successor-rank) choices.
//!
//! The paper stores a dense `[vocab, k]` matrix (< 2 MB for a 32k vocabulary). With
//! Qwen's 152k tokens that would be 4.8 MB at k = 8, so only tokens actually seen are
//! stored, in a map bounded by `max_entries` (the default keeps it under 2 MB).

use std::collections::HashMap;

use crate::tree::TokenTree;
use crate::Drafter;

/// Most successors stored per token.
pub const MAX_K: usize = 8;

const NONE: u32 = u32::MAX;

/// The draft tree template: each entry is the path of successor ranks from the root
/// (`[0, 1]` = the second-best successor of the root's best successor), parents
/// before children, in order of priority: a budget of `b` tokens takes the first `b`
/// entries. The shape favours the top-1 chain (deep) with a few runners-up near the
/// root, where acceptance is likeliest.
pub const DEFAULT_TEMPLATE: &[&[u8]] = &[
    &[0],
    &[0, 0],
    &[1],
    &[0, 0, 0],
    &[0, 1],
    &[1, 0],
    &[2],
    &[0, 0, 0, 0],
    &[0, 0, 1],
    &[0, 1, 0],
    &[1, 0, 0],
    &[0, 0, 0, 0, 0],
    &[3],
    &[2, 0],
    &[0, 2],
    &[1, 1],
    &[0, 0, 0, 1],
    &[0, 0, 1, 0],
    &[0, 0, 0, 0, 0, 0],
    &[0, 1, 0, 0],
    &[1, 0, 0, 0],
    &[0, 0, 0, 0, 1],
    &[0, 0, 0, 0, 0, 0, 0],
    &[0, 0, 0, 0, 0, 0, 0, 0],
];

/// Settings of [`RecycleDrafter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecycleConfig {
    /// Successors stored per token (1..=8).
    pub k: usize,
    /// Most tokens with stored successors; further new tokens are not stored.
    pub max_entries: usize,
    /// Rank paths, see [`DEFAULT_TEMPLATE`].
    pub template: Vec<Vec<u8>>,
}

impl Default for RecycleConfig {
    fn default() -> Self {
        RecycleConfig {
            k: MAX_K,
            // 37 bytes per bucket; 28k entries fit 32k buckets: about 1.2 MB.
            max_entries: 28_000,
            template: DEFAULT_TEMPLATE.iter().map(|p| p.to_vec()).collect(),
        }
    }
}

impl RecycleConfig {
    /// One-line error for settings that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.k == 0 || self.k > MAX_K {
            return Err(format!("recycle k must be 1..={MAX_K}, got {}", self.k));
        }
        for (i, path) in self.template.iter().enumerate() {
            let Some((&last, parent)) = path.split_last() else {
                return Err(format!("recycle template entry {i} is empty"));
            };
            if usize::from(last) >= self.k {
                return Err(format!(
                    "recycle template entry {i} uses rank {last} but only {} successors are kept",
                    self.k
                ));
            }
            if !parent.is_empty() && !self.template[..i].iter().any(|p| p[..] == *parent) {
                return Err(format!(
                    "recycle template entry {i} comes before its parent {parent:?}"
                ));
            }
        }
        Ok(())
    }
}

/// The Token Recycling drafter; its map persists across generations (the paper's
/// "hot start"), so it keeps improving over a session.
#[derive(Clone, Debug)]
pub struct RecycleDrafter {
    k: usize,
    max_entries: usize,
    template: Vec<Vec<u8>>,
    /// Template entry → index of its parent entry (`None`: child of the root).
    template_parent: Vec<Option<usize>>,
    successors: HashMap<u32, [u32; MAX_K]>,
    /// Scratch: tree node of each template entry in the current proposal.
    nodes: Vec<Option<usize>>,
    top: Vec<(f32, u32)>,
}

impl RecycleDrafter {
    /// Panics on an invalid config; call [`RecycleConfig::validate`] on user input.
    pub fn new(config: RecycleConfig) -> RecycleDrafter {
        if let Err(e) = config.validate() {
            panic!("RecycleDrafter::new: {e}");
        }
        let template_parent = config
            .template
            .iter()
            .map(|p| {
                let parent = &p[..p.len() - 1];
                (!parent.is_empty())
                    .then(|| config.template.iter().position(|q| q[..] == *parent))
                    .flatten()
            })
            .collect();
        RecycleDrafter {
            k: config.k,
            max_entries: config.max_entries,
            template: config.template,
            template_parent,
            successors: HashMap::new(),
            nodes: Vec::new(),
            top: Vec::with_capacity(MAX_K + 1),
        }
    }

    /// Tokens with stored successors.
    pub fn entries(&self) -> usize {
        self.successors.len()
    }

    /// The stored successors of `token`, best first.
    pub fn successors(&self, token: u32) -> Vec<u32> {
        self.successors.get(&token).map_or_else(Vec::new, |s| {
            s[..self.k].iter().copied().filter(|&t| t != NONE).collect()
        })
    }

    /// Records the target's `k` most likely successors of `token` from its logits row.
    pub fn update(&mut self, token: u32, logits: &[f32]) {
        if !self.successors.contains_key(&token) && self.successors.len() >= self.max_entries {
            return;
        }
        top_k(logits, self.k, &mut self.top);
        let mut row = [NONE; MAX_K];
        for (slot, &(_, id)) in row.iter_mut().zip(&self.top) {
            *slot = id;
        }
        self.successors.insert(token, row);
    }
}

impl Drafter for RecycleDrafter {
    fn name(&self) -> &'static str {
        "recycle"
    }

    fn propose(&mut self, _context: &[u32], tree: &mut TokenTree, budget: usize, max_depth: usize) {
        self.nodes.clear();
        let mut added = 0;
        for (i, path) in self.template.iter().enumerate() {
            if added == budget {
                break;
            }
            let parent_node = match self.template_parent[i] {
                None => Some(0),
                Some(p) => self.nodes[p],
            };
            let node = parent_node
                .filter(|_| path.len() <= max_depth)
                .and_then(|parent| {
                    let succ = self.successors.get(&tree.token(parent))?;
                    let token = succ[usize::from(path[path.len() - 1])];
                    (token != NONE).then(|| {
                        let (node, new) = tree.insert(parent, token);
                        added += usize::from(new);
                        node
                    })
                });
            self.nodes.push(node);
        }
    }

    fn observe(&mut self, tree: &TokenTree, logits: &[f32], vocab: usize, _accepted: &[usize]) {
        for (node, row) in logits.chunks_exact(vocab).enumerate().take(tree.len()) {
            self.update(tree.token(node), row);
        }
    }

    fn wants_logits(&self) -> bool {
        true
    }

    fn memory_bytes(&self) -> usize {
        // Key, value and hashbrown's control byte per bucket.
        self.successors.capacity() * (std::mem::size_of::<(u32, [u32; MAX_K])>() + 1)
    }
}

/// The `k` largest entries of `row` as `(logit, id)`, largest first, ties to the lower
/// id (the order `argmax` uses, so rank 0 is the greedy choice).
fn top_k(row: &[f32], k: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    for (i, &x) in row.iter().enumerate() {
        if x.is_nan() || (out.len() == k && x <= out[k - 1].0) {
            continue;
        }
        // Insert after every entry >= x (earlier ids win ties).
        let at = out.partition_point(|&(v, _)| v >= x);
        if out.len() == k {
            out.pop();
        }
        out.insert(at, (x, i as u32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(vocab: usize, ranked: &[u32]) -> Vec<f32> {
        let mut r = vec![0.0; vocab];
        for (i, &t) in ranked.iter().enumerate() {
            r[t as usize] = 10.0 - i as f32;
        }
        r
    }

    #[test]
    fn top_k_orders_by_logit_then_id() {
        let mut out = Vec::new();
        top_k(&[1.0, 3.0, 3.0, f32::NAN, 2.0, -1.0], 3, &mut out);
        assert_eq!(out, vec![(3.0, 1), (3.0, 2), (2.0, 4)]);
        top_k(&[1.0], 3, &mut out);
        assert_eq!(out, vec![(1.0, 0)]);
    }

    #[test]
    fn drafts_along_the_template_from_observed_successors() {
        let mut d = RecycleDrafter::new(RecycleConfig::default());
        let vocab = 16;
        d.update(1, &row(vocab, &[2, 3, 4]));
        d.update(2, &row(vocab, &[5, 6]));
        d.update(5, &row(vocab, &[7]));
        assert_eq!(&d.successors(1)[..3], &[2, 3, 4]);
        let mut t = TokenTree::new(1);
        d.propose(&[1], &mut t, 4, 8);
        // Template order: [0] → 2, [0,0] → 5, [1] → 3, [0,0,0] → 7.
        assert_eq!(t.tokens(), &[1, 2, 5, 3, 7]);
        assert_eq!(t.path_to(4), vec![0, 1, 2, 4]);
        // Depth limit.
        t.reset(1);
        d.propose(&[1], &mut t, 10, 1);
        assert!(t.tokens()[1..]
            .iter()
            .all(|&x| [2, 3, 4].contains(&x) || t.depth(1) == 1));
        assert_eq!(t.max_depth(), 1);
        // Unknown root: nothing.
        t.reset(9);
        d.propose(&[9], &mut t, 10, 8);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn observe_updates_every_node_and_the_map_stays_bounded() {
        let mut d = RecycleDrafter::new(RecycleConfig {
            max_entries: 2,
            ..RecycleConfig::default()
        });
        let vocab = 8;
        let mut t = TokenTree::new(1);
        t.insert_chain(0, &[2, 3], 8);
        let logits: Vec<f32> = [row(vocab, &[2]), row(vocab, &[3]), row(vocab, &[4])].concat();
        d.observe(&t, &logits, vocab, &[0, 1, 2]);
        assert_eq!(d.entries(), 2);
        assert_eq!(d.successors(1)[0], 2);
        assert_eq!(d.successors(2)[0], 3);
        assert!(d.successors(3).is_empty());
        // Existing entries are still overwritten.
        d.update(1, &row(vocab, &[6]));
        assert_eq!(d.successors(1)[0], 6);
        let big = RecycleDrafter::new(RecycleConfig::default());
        assert!(big.memory_bytes() < 2 << 20);
    }

    #[test]
    fn validates_templates() {
        assert!(RecycleConfig::default().validate().is_ok());
        let orphan = RecycleConfig {
            template: vec![vec![0, 0]],
            ..RecycleConfig::default()
        };
        assert!(orphan.validate().is_err());
        let rank = RecycleConfig {
            k: 2,
            template: vec![vec![2]],
            ..RecycleConfig::default()
        };
        assert!(rank.validate().is_err());
    }
}

//! A token tree: the draft of one speculative step.

/// Draft tokens as a tree rooted at the step's first token (node 0, the token the
/// target has already chosen). Nodes are stored in insertion order and every parent
/// comes before its children, so the order is a valid batch order for the forward
/// pass (a topological order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenTree {
    tokens: Vec<u32>,
    /// Parent of each node; the root's is itself (0) and is never read as a parent.
    parents: Vec<usize>,
    /// Depth below the root (root: 0).
    depths: Vec<usize>,
}

impl TokenTree {
    /// A tree holding only `root`.
    pub fn new(root: u32) -> TokenTree {
        TokenTree {
            tokens: vec![root],
            parents: vec![0],
            depths: vec![0],
        }
    }

    /// Empties the tree down to a new root, keeping the allocations.
    pub fn reset(&mut self, root: u32) {
        self.tokens.clear();
        self.parents.clear();
        self.depths.clear();
        self.tokens.push(root);
        self.parents.push(0);
        self.depths.push(0);
    }

    /// Nodes, the root included.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Never true: a tree always has its root. (For clippy's `len` convention.)
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Drafted nodes (all but the root).
    pub fn n_draft(&self) -> usize {
        self.tokens.len() - 1
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn token(&self, node: usize) -> u32 {
        self.tokens[node]
    }

    /// `None` for the root.
    pub fn parent(&self, node: usize) -> Option<usize> {
        (node != 0).then(|| self.parents[node])
    }

    pub fn depth(&self, node: usize) -> usize {
        self.depths[node]
    }

    /// Depth of the deepest node.
    pub fn max_depth(&self) -> usize {
        self.depths.iter().copied().max().unwrap_or(0)
    }

    /// The child of `parent` carrying `token`, if any.
    pub fn child(&self, parent: usize, token: u32) -> Option<usize> {
        (1..self.len()).find(|&i| self.parents[i] == parent && self.tokens[i] == token)
    }

    /// Adds `token` under `parent` unless that child exists; returns the child's index
    /// and whether it was added. Panics if `parent` is not a node (a caller bug).
    pub fn insert(&mut self, parent: usize, token: u32) -> (usize, bool) {
        assert!(parent < self.len(), "TokenTree::insert: no node {parent}");
        if let Some(i) = self.child(parent, token) {
            return (i, false);
        }
        self.tokens.push(token);
        self.parents.push(parent);
        self.depths.push(self.depths[parent] + 1);
        (self.tokens.len() - 1, true)
    }

    /// Inserts `chain` as a path below `parent` (sharing existing prefixes), adding at
    /// most `budget` nodes; returns how many were added.
    pub fn insert_chain(&mut self, parent: usize, chain: &[u32], budget: usize) -> usize {
        let mut added = 0;
        let mut at = parent;
        for &t in chain {
            if self.child(at, t).is_none() && added == budget {
                break;
            }
            let (i, new) = self.insert(at, t);
            added += usize::from(new);
            at = i;
        }
        added
    }

    /// Node indices from the root down to `node`.
    pub fn path_to(&self, node: usize) -> Vec<usize> {
        let mut path = vec![node];
        let mut at = node;
        while at != 0 {
            at = self.parents[at];
            path.push(at);
        }
        path.reverse();
        path
    }

    /// RoPE positions of the nodes when the root goes at position `base`: a node's
    /// position is `base + depth`, exactly where it would sit in a plain sequence.
    pub fn positions(&self, base: usize, out: &mut Vec<usize>) {
        out.clear();
        out.extend(self.depths.iter().map(|d| base + d));
    }

    /// The visibility mask of the tree appended after `prefix` cached slots, as
    /// `Batch::mask` wants it: `[len, prefix + len]` row-major, `true` = may attend.
    /// Node `i` sees every prefix slot, itself and its ancestors, nothing else.
    pub fn mask(&self, prefix: usize, out: &mut Vec<bool>) {
        let n = self.len();
        let width = prefix + n;
        out.clear();
        out.resize(n * width, false);
        for i in 0..n {
            let row = &mut out[i * width..(i + 1) * width];
            row[..prefix].fill(true);
            let mut at = i;
            loop {
                row[prefix + at] = true;
                if at == 0 {
                    break;
                }
                at = self.parents[at];
            }
        }
    }

    /// Mask rows for evaluating `nodes` in a cache that holds the tree's nodes at
    /// arbitrary slots (a draft model evaluates a tree round by round, only the nodes
    /// it expands): `slots[i]` is node `i`'s slot (`usize::MAX` when not cached), the
    /// root's slot comes after every prefix slot, and `width` is the cache's length
    /// with `nodes` appended. Row `r` lets `nodes[r]` see the prefix, the root, its
    /// other ancestors and itself; every ancestor must be cached. Panics otherwise
    /// (a caller bug).
    pub fn mask_rows(&self, nodes: &[usize], slots: &[usize], width: usize, out: &mut Vec<bool>) {
        let root_slot = slots[0];
        out.clear();
        out.resize(nodes.len() * width, false);
        for (r, &node) in nodes.iter().enumerate() {
            let row = &mut out[r * width..(r + 1) * width];
            row[..=root_slot].fill(true);
            let mut at = node;
            while at != 0 {
                let slot = slots[at];
                assert!(
                    slot < width,
                    "TokenTree::mask_rows: node {at} is not cached"
                );
                row[slot] = true;
                at = self.parents[at];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_tree() -> TokenTree {
        // 10 ─┬─ 11 ── 12
        //     └─ 21
        let mut t = TokenTree::new(10);
        let (a, _) = t.insert(0, 11);
        t.insert(a, 12);
        t.insert(0, 21);
        t
    }

    #[test]
    fn structure_depths_and_paths() {
        let t = sample_tree();
        assert_eq!(t.tokens(), &[10, 11, 12, 21]);
        assert_eq!(t.parent(0), None);
        assert_eq!(t.parent(2), Some(1));
        assert_eq!(t.parent(3), Some(0));
        assert_eq!((t.depth(2), t.depth(3), t.max_depth()), (2, 1, 2));
        assert_eq!(t.path_to(2), vec![0, 1, 2]);
        assert_eq!(t.path_to(0), vec![0]);
        assert_eq!(t.child(0, 21), Some(3));
        assert_eq!(t.child(1, 21), None);
        let mut p = Vec::new();
        t.positions(7, &mut p);
        assert_eq!(p, vec![7, 8, 9, 8]);
    }

    #[test]
    fn insert_shares_prefixes_and_respects_budget() {
        let mut t = sample_tree();
        assert_eq!(t.insert(0, 11), (1, false));
        // 11 12 exists; 13 and 14 are new but only one fits.
        assert_eq!(t.insert_chain(0, &[11, 12, 13, 14], 1), 1);
        assert_eq!(t.len(), 5);
        assert_eq!(t.path_to(4), vec![0, 1, 2, 4]);
        t.reset(5);
        assert_eq!((t.len(), t.n_draft(), t.token(0)), (1, 0, 5));
    }

    #[test]
    fn mask_shows_prefix_self_and_ancestors_only() {
        let t = sample_tree();
        let mut m = Vec::new();
        t.mask(2, &mut m);
        let row = |i: usize| m[i * 6..(i + 1) * 6].to_vec();
        let (x, o) = (true, false);
        assert_eq!(row(0), vec![x, x, x, o, o, o]);
        assert_eq!(row(1), vec![x, x, x, x, o, o]);
        assert_eq!(row(2), vec![x, x, x, x, x, o]);
        assert_eq!(row(3), vec![x, x, x, o, o, x]);
        // A chain's mask is the causal mask.
        let mut c = TokenTree::new(1);
        c.insert_chain(0, &[2, 3], 8);
        c.mask(1, &mut m);
        for i in 0..3 {
            for j in 0..4 {
                assert_eq!(m[i * 4 + j], j <= i + 1, "row {i} col {j}");
            }
        }
    }

    #[test]
    fn mask_rows_follow_the_slots_of_cached_ancestors() {
        let t = sample_tree();
        // Prefix of 2 slots, root at 2; node 1 cached at 3, node 3 at 4; evaluate
        // nodes 2 and 3 (3 already cached, 2 appended at 5).
        let slots = [2, 3, 5, 4];
        let mut m = Vec::new();
        t.mask_rows(&[2, 3], &slots, 6, &mut m);
        let (x, o) = (true, false);
        assert_eq!(&m[..6], &[x, x, x, x, o, x]);
        assert_eq!(&m[6..], &[x, x, x, o, x, o]);
    }
}

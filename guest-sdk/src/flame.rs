//! Flame-graph formats of a CPU profile: Brendan Gregg's folded stacks and HUATUO's Grafana
//! nested-set frame (`flamedata`).
//!
//! Pure Rust on `std` and `serde` only: the host includes this same file
//! (`#[path = "../../guest-sdk/src/flame.rs"]`), so plugins and the host's tasks API and
//! renderers produce byte-identical documents from one definition.
//!
//! Input is a list of [`FoldedStack`]s: frame labels root first (borrowed, so a profile's
//! label table is built once and shared by all its stacks) and a value (samples, or blocked
//! nanoseconds off-cpu). Build the labels with [`frame_label`] and [`stack_path`]: the root
//! frame is the command name, then the user frames, then the kernel frames suffixed `_[k]`
//! (HUATUO's convention); a truncated user stack gets a [`TRUNCATED`] frame right after the
//! command, where its missing outer callers would be.
//!
//! **Nested set** ([`nested_set`]): the stacks are merged into one call tree under a
//! synthetic root [`TOTAL`] at level 0, as Pyroscope's flame graph (and so HUATUO's
//! `TreeToNestedSetDataFrame`, which converts one) has it: the command names are at level 1,
//! their callees below. The rows are a depth-first, pre-order walk with siblings sorted by
//! label; `value` is the node's subtree total and `self` its own samples, so every row's
//! `value` is its `self` plus its children's values. Grafana's flame-graph panel renders the
//! rows as they are. The rows are capped (at [`MAX_ROWS`] by default): the heaviest nodes
//! are kept, and the children a kept node loses are merged into one [`OTHER`] child (its
//! last row), so the totals stay exact.
//!
//! **Folded** ([`folded`]): one line `a;b;c <value>` per distinct stack, merged and sorted;
//! `;` inside a name becomes `:` and line breaks become spaces (what FlameGraph's
//! `stackcollapse-perf.pl` does), because the format has no escapes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::{Deserialize, Serialize};

/// Label of the nested set's synthetic root (level 0).
pub const TOTAL: &str = "total";
/// Label of the node that holds what a cap left out.
pub const OTHER: &str = "[other]";
/// Frame marking a user stack whose outer callers are missing (no frame pointer).
pub const TRUNCATED: &str = "[truncated]";
/// Label of a frame index or a name that is not there.
pub const UNKNOWN: &str = "[unknown]";
/// Suffix of kernel frames (HUATUO's `perf` tool).
pub const KERNEL_SUFFIX: &str = "_[k]";
/// Default cap of [`nested_set`] rows: enough for any profile a 10 s session yields, and
/// about 5 MiB of JSON at worst.
pub const MAX_ROWS: usize = 65_536;

/// One stack: labels outermost (the command) first, leaf last, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedStack<'a> {
    pub frames: Vec<&'a str>,
    pub value: u64,
}

/// One row of the nested-set frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlameRow {
    /// Depth: 0 for [`TOTAL`], 1 for the command names.
    pub level: u32,
    /// The node's subtree total.
    pub value: u64,
    /// The node's own samples (stacks that end here).
    #[serde(rename = "self")]
    pub self_: u64,
    pub label: String,
}

/// A profile's flame data within a size budget ([`within`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flame {
    pub flamedata: Vec<FlameRow>,
    pub folded: String,
    /// Rows or lines were folded into [`OTHER`] to fit.
    pub capped: bool,
}

/// The label of one frame: its name (or [`UNKNOWN`] when empty), with [`KERNEL_SUFFIX`] for
/// a kernel frame.
pub fn frame_label(name: &str, kernel: bool) -> String {
    let name = if name.is_empty() { UNKNOWN } else { name };
    if kernel {
        format!("{name}{KERNEL_SUFFIX}")
    } else {
        name.to_owned()
    }
}

/// The labels of one stack, root first: `comm` (or [`UNKNOWN`]), [`TRUNCATED`] when the
/// user stack was cut short, then `labels[i]` for each frame index (user frames, then
/// kernel frames, as the host orders them); an index outside `labels` is [`UNKNOWN`].
pub fn stack_path<'a>(
    comm: &'a str,
    labels: &'a [String],
    frames: &[u32],
    user_truncated: bool,
) -> Vec<&'a str> {
    let mut path = Vec::with_capacity(frames.len() + 2);
    path.push(if comm.is_empty() { UNKNOWN } else { comm });
    if user_truncated {
        path.push(TRUNCATED);
    }
    path.extend(frames.iter().map(|&i| {
        usize::try_from(i)
            .ok()
            .and_then(|i| labels.get(i))
            .map_or(UNKNOWN, String::as_str)
    }));
    path
}

/// A frame name as folded text can carry it.
fn folded_name(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains([';', '\n', '\r']) {
        name.chars()
            .map(|c| match c {
                ';' => ':',
                '\n' | '\r' => ' ',
                c => c,
            })
            .collect::<String>()
            .into()
    } else {
        name.into()
    }
}

/// Distinct stacks as folded paths with their merged values (sorted by path). Stacks with
/// no frames or a zero value are left out.
fn merge_folded(stacks: &[FoldedStack<'_>]) -> BTreeMap<String, u64> {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for stack in stacks
        .iter()
        .filter(|s| s.value > 0 && !s.frames.is_empty())
    {
        let mut path = String::new();
        for (i, frame) in stack.frames.iter().enumerate() {
            if i > 0 {
                path.push(';');
            }
            path.push_str(&folded_name(frame));
        }
        let value = lines.entry(path).or_insert(0);
        *value = value.saturating_add(stack.value);
    }
    lines
}

/// Brendan Gregg's folded format: `a;b;c <value>\n` per distinct stack, sorted.
pub fn folded(stacks: &[FoldedStack<'_>]) -> String {
    render_folded(&merge_folded(stacks), usize::MAX).0
}

/// [`folded`] in at most `max_bytes` (when at least one `[other] <value>` line fits): the
/// heaviest lines are kept and the others merged into one `[other]` line. Returns whether
/// lines were merged.
pub fn folded_capped(stacks: &[FoldedStack<'_>], max_bytes: usize) -> (String, bool) {
    render_folded(&merge_folded(stacks), max_bytes)
}

fn line_len(path: &str, value: u64) -> usize {
    path.len() + 1 + value.to_string().len() + 1
}

fn render_folded(lines: &BTreeMap<String, u64>, max_bytes: usize) -> (String, bool) {
    let all: usize = lines.iter().map(|(p, v)| line_len(p, *v)).sum();
    let mut out = String::new();
    if all <= max_bytes {
        out.reserve(all);
        for (path, value) in lines {
            out.push_str(&format!("{path} {value}\n"));
        }
        return (out, false);
    }
    // Heaviest first (ties by path), while the `[other]` line still fits after them.
    let total: u64 = lines.values().fold(0, |a, v| a.saturating_add(*v));
    let mut by_value: Vec<(&String, u64)> = lines.iter().map(|(p, v)| (p, *v)).collect();
    by_value.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let reserve = line_len(OTHER, total);
    let mut used = 0;
    let mut kept: BTreeMap<&str, u64> = BTreeMap::new();
    let mut other = 0u64;
    for (path, value) in by_value {
        let len = line_len(path, value);
        if used + len + reserve <= max_bytes {
            used += len;
            kept.insert(path, value);
        } else {
            other = other.saturating_add(value);
        }
    }
    if other > 0 && used + line_len(OTHER, other) <= max_bytes {
        *kept.entry(OTHER).or_insert(0) += other;
    }
    for (path, value) in kept {
        out.push_str(&format!("{path} {value}\n"));
    }
    (out, true)
}

/// A merged call tree. Node 0 is the root; children are kept sorted by label.
struct Tree<'a> {
    nodes: Vec<Node<'a>>,
}

struct Node<'a> {
    label: &'a str,
    value: u64,
    self_: u64,
    parent: usize,
    children: BTreeMap<&'a str, usize>,
}

impl<'a> Tree<'a> {
    fn new(stacks: &[FoldedStack<'a>]) -> Self {
        let mut nodes = vec![Node {
            label: TOTAL,
            value: 0,
            self_: 0,
            parent: 0,
            children: BTreeMap::new(),
        }];
        for stack in stacks.iter().filter(|s| s.value > 0) {
            let mut at = 0;
            nodes[0].value = nodes[0].value.saturating_add(stack.value);
            for frame in &stack.frames {
                let next = match nodes[at].children.get(frame) {
                    Some(&child) => child,
                    None => {
                        let child = nodes.len();
                        nodes.push(Node {
                            label: frame,
                            value: 0,
                            self_: 0,
                            parent: at,
                            children: BTreeMap::new(),
                        });
                        nodes[at].children.insert(frame, child);
                        child
                    }
                };
                at = next;
                nodes[at].value = nodes[at].value.saturating_add(stack.value);
            }
            nodes[at].self_ = nodes[at].self_.saturating_add(stack.value);
        }
        Tree { nodes }
    }

    /// Which nodes to keep for at most `max_rows` rows, counting one [`OTHER`] row for each
    /// kept node that loses children: greedily by value (a node is never heavier than its
    /// parent, so the kept set stays connected), ties by creation order. Also whether the
    /// `[other]` rows fit (not when `max_rows` leaves room for the root alone).
    fn keep(&self, max_rows: usize) -> (Vec<bool>, bool) {
        let mut kept = vec![false; self.nodes.len()];
        kept[0] = true;
        // Children of each kept node not kept (yet).
        let mut dropped: Vec<usize> = self.nodes.iter().map(|n| n.children.len()).collect();
        let mut rows = 1 + usize::from(dropped[0] > 0);
        if rows > max_rows {
            return (kept, false);
        }
        let by_value = |c: usize| (self.nodes[c].value, Reverse(c));
        let mut heap: BinaryHeap<(u64, Reverse<usize>)> = self.nodes[0]
            .children
            .values()
            .map(|&c| by_value(c))
            .collect();
        while let Some(&(_, Reverse(node))) = heap.peek() {
            let parent = self.nodes[node].parent;
            // The node's row, its own `[other]` row if it has children, minus its parent's
            // `[other]` row when it was the last child left out.
            let grows = 1 + usize::from(!self.nodes[node].children.is_empty());
            let shrinks = usize::from(dropped[parent] == 1);
            if rows + grows - shrinks > max_rows {
                break;
            }
            heap.pop();
            rows = rows + grows - shrinks;
            kept[node] = true;
            dropped[parent] -= 1;
            heap.extend(self.nodes[node].children.values().map(|&c| by_value(c)));
        }
        (kept, true)
    }

    fn rows(&self, max_rows: usize) -> (Vec<FlameRow>, bool) {
        enum Item {
            Node(usize, u32),
            Other(u64, u32),
        }
        let (kept, others_fit) = self.keep(max_rows);
        let mut capped = false;
        let mut rows = Vec::new();
        let mut stack = vec![Item::Node(0, 0)];
        while let Some(item) = stack.pop() {
            let (at, level) = match item {
                Item::Node(at, level) => (at, level),
                Item::Other(value, level) => {
                    rows.push(FlameRow {
                        level,
                        value,
                        self_: value,
                        label: OTHER.to_owned(),
                    });
                    continue;
                }
            };
            let node = &self.nodes[at];
            rows.push(FlameRow {
                level,
                value: node.value,
                self_: node.self_,
                label: node.label.to_owned(),
            });
            let mut other = 0u64;
            for &child in node.children.values().filter(|&&c| !kept[c]) {
                other = other.saturating_add(self.nodes[child].value);
                capped = true;
            }
            // Pushed first, so popped after the children: the last child row.
            if other > 0 && others_fit {
                stack.push(Item::Other(other, level + 1));
            }
            for &child in node.children.values().rev().filter(|&&c| kept[c]) {
                stack.push(Item::Node(child, level + 1));
            }
        }
        (rows, capped)
    }
}

/// HUATUO's `flamedata`: the merged tree as nested-set rows, capped at [`MAX_ROWS`].
pub fn nested_set(stacks: &[FoldedStack<'_>]) -> Vec<FlameRow> {
    nested_set_capped(stacks, MAX_ROWS).0
}

/// [`nested_set`] in at most `max_rows` rows (at least the root's); returns whether nodes
/// were merged into [`OTHER`].
pub fn nested_set_capped(stacks: &[FoldedStack<'_>], max_rows: usize) -> (Vec<FlameRow>, bool) {
    Tree::new(stacks).rows(max_rows.max(1))
}

/// JSON length of a value (what it adds to a document).
fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    serde_json::to_string(value).map_or(usize::MAX, |s| s.len())
}

/// Both formats in at most `max_bytes` of JSON together (a document's budget for them):
/// uncapped when they fit, else the folded text gets at most half and the rows the rest,
/// each capped as [`folded_capped`] and [`nested_set_capped`] do.
pub fn within(stacks: &[FoldedStack<'_>], max_bytes: usize) -> Flame {
    let tree = Tree::new(stacks);
    let lines = merge_folded(stacks);
    let (folded, _) = render_folded(&lines, usize::MAX);
    let (flamedata, rows_capped) = tree.rows(MAX_ROWS);
    let (folded_json, rows_json) = (json_len(&folded), json_len(&flamedata));
    if folded_json.saturating_add(rows_json) <= max_bytes {
        return Flame {
            flamedata,
            folded,
            capped: rows_capped,
        };
    }
    // Folded: shrink the raw budget in proportion until its JSON (escapes, quotes) fits.
    let half = max_bytes / 2;
    let (mut folded, mut folded_capped, mut folded_json) = (folded, false, folded_json);
    let mut budget = folded.len();
    while folded_json > half && budget > 0 {
        budget = (budget as u128 * half as u128 / folded_json.max(1) as u128) as usize;
        budget = budget.min(folded.len().saturating_sub(1));
        (folded, folded_capped) = render_folded(&lines, budget);
        folded_json = json_len(&folded);
    }
    // Rows: the rest of the budget, the row cap shrunk the same way.
    let room = max_bytes.saturating_sub(folded_json);
    let (mut flamedata, mut rows_capped, mut rows_json) = (flamedata, rows_capped, rows_json);
    let mut cap = flamedata.len();
    while rows_json > room && cap > 1 {
        cap = (cap as u128 * room as u128 / rows_json.max(1) as u128) as usize;
        cap = cap.clamp(1, flamedata.len().saturating_sub(1).max(1));
        (flamedata, rows_capped) = tree.rows(cap);
        rows_json = json_len(&flamedata);
    }
    Flame {
        flamedata,
        folded,
        capped: folded_capped || rows_capped,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn stack<'a>(frames: &[&'a str], value: u64) -> FoldedStack<'a> {
        FoldedStack {
            frames: frames.to_vec(),
            value,
        }
    }

    fn row(level: u32, value: u64, self_: u64, label: &str) -> FlameRow {
        FlameRow {
            level,
            value,
            self_,
            label: label.to_owned(),
        }
    }

    /// Every row's value is its self plus its children's values; levels step by one.
    fn check_sums(rows: &[FlameRow]) {
        for (i, r) in rows.iter().enumerate() {
            let children: u64 = rows[i + 1..]
                .iter()
                .take_while(|c| c.level > r.level)
                .filter(|c| c.level == r.level + 1)
                .map(|c| c.value)
                .sum();
            assert_eq!(r.value, r.self_ + children, "row {i} {r:?} in {rows:?}");
            if i > 0 {
                assert!(r.level >= 1 && r.level <= rows[i - 1].level + 1, "{rows:?}");
            }
        }
    }

    #[test]
    fn merges_sorts_and_sums() {
        let stacks = [
            stack(&["sh", "main", "work_[k]"], 3),
            stack(&["dd", "read", "ksys_read_[k]"], 5),
            stack(&["sh", "main"], 2),
            stack(&["dd", "read", "ksys_read_[k]"], 1),
            stack(&["dd", "write"], 4),
            stack(&["dd", "ignored"], 0),
        ];
        let rows = nested_set(&stacks);
        assert_eq!(
            rows,
            vec![
                row(0, 15, 0, TOTAL),
                row(1, 10, 0, "dd"),
                row(2, 6, 0, "read"),
                row(3, 6, 6, "ksys_read_[k]"),
                row(2, 4, 4, "write"),
                row(1, 5, 0, "sh"),
                row(2, 5, 2, "main"),
                row(3, 3, 3, "work_[k]"),
            ]
        );
        check_sums(&rows);
        assert_eq!(
            folded(&stacks),
            "dd;read;ksys_read_[k] 6\ndd;write 4\nsh;main 2\nsh;main;work_[k] 3\n"
        );
        let json = serde_json::to_string(&rows[1]).unwrap();
        assert_eq!(json, r#"{"level":1,"value":10,"self":0,"label":"dd"}"#);
    }

    #[test]
    fn an_empty_profile_is_the_root_alone() {
        assert_eq!(nested_set(&[]), vec![row(0, 0, 0, TOTAL)]);
        assert_eq!(folded(&[]), "");
    }

    #[test]
    fn folded_names_lose_separators_nested_set_keeps_them() {
        let stacks = [stack(&["a;b", "<[u8; 4] as X>::f\nline", "c d"], 7)];
        assert_eq!(folded(&stacks), "a:b;<[u8: 4] as X>::f line;c d 7\n");
        let rows = nested_set(&stacks);
        assert_eq!(rows[1].label, "a;b");
        assert_eq!(rows[2].label, "<[u8; 4] as X>::f\nline");
    }

    #[test]
    fn labels_and_paths() {
        assert_eq!(frame_label("vfs_read", true), "vfs_read_[k]");
        assert_eq!(frame_label("burn", false), "burn");
        assert_eq!(frame_label("", false), UNKNOWN);
        let labels = vec!["main".to_owned(), "burn".to_owned(), "irq_[k]".to_owned()];
        assert_eq!(
            stack_path("sh", &labels, &[1, 2], true),
            vec!["sh", TRUNCATED, "burn", "irq_[k]"]
        );
        assert_eq!(
            stack_path("", &labels, &[0, 9], false),
            vec![UNKNOWN, "main", UNKNOWN]
        );
    }

    /// Many distinct leaves under a few callers, values 1..=n.
    fn wide(n: u64, labels: &[String]) -> Vec<FoldedStack<'_>> {
        (0..n)
            .map(|i| {
                let i = i as usize;
                FoldedStack {
                    frames: vec!["comm", &labels[i % 3], &labels[3 + i]],
                    value: i as u64 + 1,
                }
            })
            .collect()
    }

    #[test]
    fn rows_are_capped_with_other_and_exact_totals() {
        let n = 1000u64;
        let labels: Vec<String> = (0..n + 3).map(|i| format!("f{i:05}")).collect();
        let stacks = wide(n, &labels);
        let (all, capped) = nested_set_capped(&stacks, MAX_ROWS);
        assert!(!capped);
        assert_eq!(all.len(), 1 + 1 + 3 + 1000);
        for cap in [1, 2, 3, 5, 8, 50, 500, 1004, 1005] {
            let (rows, capped) = nested_set_capped(&stacks, cap);
            assert!(rows.len() <= cap, "cap {cap}: {} rows", rows.len());
            assert_eq!(capped, cap < all.len(), "cap {cap}");
            assert_eq!(rows[0].value, n * (n + 1) / 2, "total kept exactly");
            if cap > 1 {
                check_sums(&rows);
            }
            if cap >= 50 {
                // The heaviest leaf is kept; light ones went into `[other]`.
                assert!(rows.iter().any(|r| r.label == labels[3 + 999]), "cap {cap}");
                let others = rows.iter().any(|r| r.label == OTHER);
                assert_eq!(others, capped, "cap {cap}");
            }
        }
        // Default cap on a profile far larger than it.
        let n = 70_000u64;
        let labels: Vec<String> = (0..n + 3).map(|i| format!("g{i}")).collect();
        let stacks = wide(n, &labels);
        let rows = nested_set(&stacks);
        assert!(
            rows.len() <= MAX_ROWS && rows.len() > MAX_ROWS - 10,
            "{}",
            rows.len()
        );
        assert_eq!(rows.iter().filter(|r| r.label == OTHER).count(), 3);
        check_sums(&rows);
    }

    #[test]
    fn folded_capped_keeps_heaviest_lines() {
        let stacks = [
            stack(&["a", "x"], 1),
            stack(&["b", "y"], 50),
            stack(&["c", "z"], 2),
        ];
        let (text, capped) = folded_capped(&stacks, 1000);
        assert!(!capped);
        assert_eq!(text.lines().count(), 3);
        // Room for the heaviest line and an `[other]` line as long as the total's.
        let (text, capped) = folded_capped(&stacks, "b;y 50\n[other] 53\n".len());
        assert!(capped);
        assert_eq!(text, "[other] 3\nb;y 50\n");
    }

    #[test]
    fn within_a_budget() {
        let n = 5000u64;
        let labels: Vec<String> = (0..n + 3)
            .map(|i| format!("some_long_function_name_{i}"))
            .collect();
        let stacks = wide(n, &labels);
        let full = within(&stacks, usize::MAX);
        assert!(!full.capped);
        assert_eq!(full.folded, folded(&stacks));
        for budget in [200_000usize, 50_000, 5_000] {
            let flame = within(&stacks, budget);
            assert!(flame.capped);
            let used = json_len(&flame.flamedata) + json_len(&flame.folded);
            assert!(used <= budget, "{used} > {budget}");
            assert_eq!(flame.flamedata[0].value, n * (n + 1) / 2);
            check_sums(&flame.flamedata);
            assert!(flame.flamedata.len() > 3, "budget {budget}");
        }
    }
}

//! Rewrites a source file so that every mutant cargo-mutants lists for it is present at once,
//! each behind a run-time switch (a "mutant schema"): `crate::mutant_schemata::active(ID)`.
//! With no mutant active the rewritten code computes what the original computes, in the same
//! order; with mutant `ID` active it computes what cargo-mutants' edit computes.
//!
//! Each kind of mutant has its own form:
//! - a binary operator `L op R` becomes `match ((L), (R)) { (l, r) => if active(ID) { l new r }
//!   else { l op r } }`: both operands are evaluated once, left first, as in the original;
//!   comparisons take references (`==` and `<` borrow their operands), `&&` and `||` evaluate
//!   their right side only in the branch (they short-circuit), and `P op= R` evaluates `R` once
//!   and writes the place `P` in the branch;
//! - a deleted unary operator `!E` / `-E` becomes `match (E) { e => if active(ID) { e } else { !e } }`;
//! - a function whose body is replaced by a value gets `if active(ID) { return VALUE; }` in
//!   front of its statements;
//! - a deleted match arm gets the guard `if !active(ID)` (or `!active(ID) && (guard)`), so that
//!   the value falls through to the arms below, as if the arm were not there;
//! - a guard replaced by `true` or `false` becomes `(if active(ID) { true } else { guard })`.
//!
//! Mutants in const contexts (const and static items, const fns, array lengths), in let chains,
//! and of other kinds (a deleted struct field) are not rewritten: they are left for
//! cargo-mutants to judge one build at a time.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use proc_macro2::{LineColumn, Span};
use serde::{Deserialize, Serialize};
use syn::spanned::Spanned;
use syn::visit::{self, Visit};

/// The function every rewritten site calls.
pub const SWITCH: &str = "crate::mutant_schemata::active";

/// One mutant as `cargo mutants --list --json` describes it (the fields used here).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ListedMutant {
    pub name: String,
    pub file: String,
    pub genre: String,
    pub replacement: String,
    pub span: ListedSpan,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct ListedSpan {
    pub start: ListedPosition,
    pub end: ListedPosition,
}

/// cargo-mutants' position: line and column both count from 1, columns in characters.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub struct ListedPosition {
    pub line: usize,
    pub column: usize,
}

impl From<LineColumn> for ListedPosition {
    fn from(lc: LineColumn) -> Self {
        // proc-macro2 counts columns from 0.
        ListedPosition {
            line: lc.line,
            column: lc.column + 1,
        }
    }
}

/// A mutant with its number in the whole list (the number `active` is called with).
#[derive(Debug, Clone)]
pub struct NumberedMutant {
    pub id: usize,
    pub mutant: ListedMutant,
}

/// What became of one mutant of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Rewritten,
    /// Left for cargo-mutants, with the reason.
    NotRewritten(String),
}

/// A rewritten file and, for each mutant, whether it was rewritten.
pub struct RewrittenFile {
    pub text: String,
    pub placements: Vec<(usize, Placement)>,
    /// Byte ranges of the rewritten text and the mutants whose code they hold: compile errors
    /// inside one are blamed on the innermost range's mutants.
    pub blame: Vec<(Range<usize>, Vec<usize>)>,
}

/// How a binary operator's operands are handed to the branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinaryForm {
    /// Arithmetic, bit and shift operators: operands by value.
    Value,
    /// Comparisons: operands by reference, as the operators borrow them.
    Compare,
    /// `&&` and `||`: the right side only evaluated in the branch.
    Lazy,
    /// `P op= R`: `R` evaluated once, the place written in the branch.
    Assign,
}

#[derive(Debug, Clone)]
enum Site {
    Binary {
        whole: Range<usize>,
        left: Range<usize>,
        right: Range<usize>,
        op: String,
        form: BinaryForm,
    },
    Unary {
        whole: Range<usize>,
        operand: Range<usize>,
        op: String,
    },
    /// Statements of a function body start here.
    FnBody { at: usize },
    /// A match arm: where its pattern ends, and its guard if it has one.
    Arm {
        pattern_end: usize,
        guard: Option<Range<usize>>,
    },
    /// A match arm's guard, replaced by a constant.
    Guard { guard: Range<usize> },
}

/// Byte offsets of a source's lines, to turn line and column into a byte offset.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    fn offset(&self, lc: LineColumn) -> usize {
        let start = self.starts[lc.line - 1];
        let line = &self.text[start..];
        start + line.char_indices().nth(lc.column).map_or(line.len(), |(i, _)| i)
    }

    fn range(&self, span: Span) -> Range<usize> {
        self.offset(span.start())..self.offset(span.end())
    }
}

/// The sites of one file by the position cargo-mutants names, one map per genre, and the
/// positions that are in a const context or a let chain.
struct Collector<'a> {
    lines: LineIndex<'a>,
    binary: HashMap<ListedPosition, Site>,
    unary: HashMap<ListedPosition, Site>,
    fn_body: HashMap<ListedPosition, Site>,
    arm: HashMap<ListedPosition, Site>,
    guard: HashMap<ListedPosition, Site>,
    unfit: HashMap<ListedPosition, &'static str>,
    const_depth: usize,
    /// Const fns that are called in a const context: their bodies stay const.
    keep_const: &'a HashSet<String>,
    /// The other const fns: name and the range of their `const` keyword, which is removed
    /// when a mutant in them is rewritten (none of them is called in a const context).
    const_fns: Vec<Range<usize>>,
    /// The const fn being visited.
    current_const_fn: Option<usize>,
    /// The const fn each site is in, by genre and position.
    owner: HashMap<(&'static str, ListedPosition), usize>,
}

impl Collector<'_> {
    fn in_const<T>(&mut self, body: impl FnOnce(&mut Self) -> T) -> T {
        self.const_depth += 1;
        let out = body(self);
        self.const_depth -= 1;
        out
    }

    fn add(&mut self, genre: &'static str, at: ListedPosition, site: Site) {
        if self.const_depth > 0 {
            self.unfit
                .insert(at, "in a const context (the switch is read at run time)");
            return;
        }
        if let Some(owner) = self.current_const_fn {
            self.owner.insert((genre, at), owner);
        }
        let map = match genre {
            "binary" => &mut self.binary,
            "unary" => &mut self.unary,
            "fn" => &mut self.fn_body,
            "guard" => &mut self.guard,
            _ => &mut self.arm,
        };
        map.insert(at, site);
    }

    /// Visits a function: `visit` walks it, `constness` is its `const` keyword, if any.
    fn function(
        &mut self,
        name: &syn::Ident,
        constness: Option<&syn::token::Const>,
        block: Option<&syn::Block>,
        visit: impl FnOnce(&mut Self),
    ) {
        let body = |c: &mut Self| {
            if let Some(first) = block.and_then(|b| b.stmts.first()) {
                let at = c.lines.offset(first.span().start());
                c.add("fn", first.span().start().into(), Site::FnBody { at });
            }
        };
        match constness {
            None => {
                body(self);
                visit(self);
            }
            Some(_) if self.keep_const.contains(&name.to_string()) => {
                if let Some(first) = block.and_then(|b| b.stmts.first()) {
                    self.unfit
                        .insert(first.span().start().into(), "in a const fn called in a const context");
                }
                self.in_const(visit);
            }
            Some(keyword) => {
                // Rewritten as a plain fn; were it called in a const context, the check would
                // say so and the next attempt would keep it const.
                self.const_fns.push(self.lines.range(keyword.span));
                let outer = self.current_const_fn.replace(self.const_fns.len() - 1);
                body(self);
                visit(self);
                self.current_const_fn = outer;
            }
        }
    }
}

fn contains_let(expr: &syn::Expr) -> bool {
    struct Finder(bool);
    impl Visit<'_> for Finder {
        fn visit_expr_let(&mut self, _: &syn::ExprLet) {
            self.0 = true;
        }
    }
    let mut finder = Finder(false);
    finder.visit_expr(expr);
    finder.0
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_const(&mut self, item: &'ast syn::ItemConst) {
        self.in_const(|c| visit::visit_item_const(c, item));
    }
    fn visit_impl_item_const(&mut self, item: &'ast syn::ImplItemConst) {
        self.in_const(|c| visit::visit_impl_item_const(c, item));
    }
    fn visit_trait_item_const(&mut self, item: &'ast syn::TraitItemConst) {
        self.in_const(|c| visit::visit_trait_item_const(c, item));
    }
    fn visit_item_static(&mut self, item: &'ast syn::ItemStatic) {
        self.in_const(|c| visit::visit_item_static(c, item));
    }
    fn visit_type_array(&mut self, ty: &'ast syn::TypeArray) {
        self.in_const(|c| visit::visit_type_array(c, ty));
    }
    fn visit_expr_repeat(&mut self, expr: &'ast syn::ExprRepeat) {
        self.visit_expr(&expr.expr);
        self.in_const(|c| c.visit_expr(&expr.len));
    }
    fn visit_expr_const(&mut self, expr: &'ast syn::ExprConst) {
        self.in_const(|c| visit::visit_expr_const(c, expr));
    }
    fn visit_generic_argument(&mut self, arg: &'ast syn::GenericArgument) {
        if matches!(arg, syn::GenericArgument::Const(_)) {
            self.in_const(|c| visit::visit_generic_argument(c, arg));
        } else {
            visit::visit_generic_argument(self, arg);
        }
    }
    fn visit_variant(&mut self, variant: &'ast syn::Variant) {
        self.in_const(|c| visit::visit_variant(c, variant));
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        let sig = &item.sig;
        self.function(&sig.ident, sig.constness.as_ref(), Some(&item.block), |c| {
            visit::visit_item_fn(c, item)
        });
    }
    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        let sig = &item.sig;
        self.function(&sig.ident, sig.constness.as_ref(), Some(&item.block), |c| {
            visit::visit_impl_item_fn(c, item)
        });
    }
    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        let sig = &item.sig;
        self.function(&sig.ident, sig.constness.as_ref(), item.default.as_ref(), |c| {
            visit::visit_trait_item_fn(c, item)
        });
    }

    fn visit_expr_binary(&mut self, expr: &'ast syn::ExprBinary) {
        use syn::BinOp::*;
        let at: ListedPosition = expr.op.span().start().into();
        let form = match expr.op {
            And(_) | Or(_) => BinaryForm::Lazy,
            Eq(_) | Ne(_) | Lt(_) | Le(_) | Gt(_) | Ge(_) => BinaryForm::Compare,
            AddAssign(_) | SubAssign(_) | MulAssign(_) | DivAssign(_) | RemAssign(_) | BitXorAssign(_)
            | BitAndAssign(_) | BitOrAssign(_) | ShlAssign(_) | ShrAssign(_) => BinaryForm::Assign,
            _ => BinaryForm::Value,
        };
        if form == BinaryForm::Lazy && (contains_let(&expr.left) || contains_let(&expr.right)) {
            self.unfit.insert(at, "in a let chain");
        } else {
            let op = self.lines.text[self.lines.range(expr.op.span())].to_string();
            let site = Site::Binary {
                whole: self.lines.range(expr.span()),
                left: self.lines.range(expr.left.span()),
                right: self.lines.range(expr.right.span()),
                op,
                form,
            };
            self.add("binary", at, site);
        }
        visit::visit_expr_binary(self, expr);
    }

    fn visit_expr_unary(&mut self, expr: &'ast syn::ExprUnary) {
        if matches!(expr.op, syn::UnOp::Not(_) | syn::UnOp::Neg(_)) {
            let op = self.lines.text[self.lines.range(expr.op.span())].to_string();
            let site = Site::Unary {
                whole: self.lines.range(expr.span()),
                operand: self.lines.range(expr.expr.span()),
                op,
            };
            self.add("unary", expr.op.span().start().into(), site);
        }
        visit::visit_expr_unary(self, expr);
    }

    fn visit_arm(&mut self, arm: &'ast syn::Arm) {
        let site = Site::Arm {
            pattern_end: self.lines.offset(arm.pat.span().end()),
            guard: arm.guard.as_ref().map(|(_, guard)| self.lines.range(guard.span())),
        };
        self.add("arm", arm.span().start().into(), site);
        if let Some((_, guard)) = &arm.guard {
            self.add(
                "guard",
                guard.span().start().into(),
                Site::Guard {
                    guard: self.lines.range(guard.span()),
                },
            );
        }
        visit::visit_arm(self, arm);
    }
}

/// One piece of an edit's text: literal text, or the rewritten source of one of its holes.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    /// The text of a branch that belongs to one mutant (blamed on it alone).
    Branch(usize, Vec<Piece>),
    Hole(usize),
}

/// A replacement of `range` of the source: `pieces`, where `Hole(i)` is `holes[i]` rewritten.
#[derive(Debug, Clone)]
struct Edit {
    range: Range<usize>,
    holes: Vec<Range<usize>>,
    pieces: Vec<Piece>,
    mutants: Vec<usize>,
    /// Of two edits of the same range, the one with the smaller rank encloses the other.
    rank: u8,
}

fn text(s: impl Into<String>) -> Piece {
    Piece::Text(s.into())
}

fn switch(id: usize) -> String {
    format!("{SWITCH}({id})")
}

/// The edits of one site for its mutants (`(id, replacement)`).
fn edits_of(site: &Site, mutants: &[(usize, String)]) -> Vec<Edit> {
    let ids: Vec<usize> = mutants.iter().map(|(id, _)| *id).collect();
    match site {
        Site::Binary {
            whole,
            left,
            right,
            op,
            form,
        } => {
            let (head, l, r) = match form {
                // Comparisons borrow their operands, as the operators do; the others take them
                // by value.
                BinaryForm::Value | BinaryForm::Compare => {
                    let (borrow, deref) = if *form == BinaryForm::Compare {
                        ("&", "*")
                    } else {
                        ("", "")
                    };
                    (
                        vec![
                            text(format!("(match ({borrow}(")),
                            Piece::Hole(0),
                            text(format!("), {borrow}(")),
                            Piece::Hole(1),
                            text(")) { (mutant_l, mutant_r) => "),
                        ],
                        format!("{deref}mutant_l"),
                        format!("{deref}mutant_r"),
                    )
                }
                BinaryForm::Lazy => (
                    vec![text("(match ("), Piece::Hole(0), text(") { mutant_l => ")],
                    "mutant_l".to_string(),
                    String::new(),
                ),
                BinaryForm::Assign => (
                    vec![text("(match ("), Piece::Hole(1), text(") { mutant_r => ")],
                    String::new(),
                    "mutant_r".to_string(),
                ),
            };
            let operation = |operator: &str| -> Vec<Piece> {
                match form {
                    BinaryForm::Lazy => vec![text(format!("{l} {operator} (")), Piece::Hole(1), text(")")],
                    BinaryForm::Assign => vec![Piece::Hole(0), text(format!(" {operator} {r}"))],
                    _ => vec![text(format!("{l} {operator} {r}"))],
                }
            };
            let mut pieces = head;
            for (id, replacement) in mutants {
                pieces.push(text(format!("if {} {{ ", switch(*id))));
                pieces.push(Piece::Branch(*id, operation(replacement)));
                pieces.push(text(" } else "));
            }
            pieces.push(text("{ "));
            pieces.extend(operation(op));
            pieces.push(text(" } })"));
            vec![Edit {
                range: whole.clone(),
                holes: vec![left.clone(), right.clone()],
                pieces,
                mutants: ids,
                rank: 1,
            }]
        }
        Site::Unary { whole, operand, op } => {
            let mut pieces = vec![text("(match ("), Piece::Hole(0), text(") { mutant_e => ")];
            for (id, _) in mutants {
                pieces.push(text(format!("if {} {{ mutant_e }} else ", switch(*id))));
            }
            pieces.push(text(format!("{{ {op}mutant_e }} }})")));
            vec![Edit {
                range: whole.clone(),
                holes: vec![operand.clone()],
                pieces,
                mutants: ids,
                rank: 1,
            }]
        }
        Site::FnBody { at } => mutants
            .iter()
            .map(|(id, value)| Edit {
                range: *at..*at,
                holes: vec![],
                pieces: vec![Piece::Branch(
                    *id,
                    vec![text(format!("if {} {{ return {value}; }} ", switch(*id)))],
                )],
                mutants: vec![*id],
                rank: 0,
            })
            .collect(),
        Site::Guard { guard } => {
            let mut pieces = vec![text("(")];
            for (id, value) in mutants {
                pieces.push(Piece::Branch(
                    *id,
                    vec![text(format!("if {} {{ {value} }} else ", switch(*id)))],
                ));
            }
            pieces.extend([text("{ "), Piece::Hole(0), text(" })")]);
            vec![Edit {
                range: guard.clone(),
                holes: vec![guard.clone()],
                pieces,
                mutants: ids,
                rank: 0,
            }]
        }
        Site::Arm { pattern_end, guard } => {
            let id = ids[0];
            match guard {
                None => vec![Edit {
                    range: *pattern_end..*pattern_end,
                    holes: vec![],
                    pieces: vec![text(format!(" if !{}", switch(id)))],
                    mutants: ids,
                    rank: 0,
                }],
                Some(guard) => vec![Edit {
                    range: guard.clone(),
                    holes: vec![guard.clone()],
                    pieces: vec![text(format!("(!{} && (", switch(id))), Piece::Hole(0), text("))")],
                    mutants: ids,
                    rank: 0,
                }],
            }
        }
    }
}

/// Edits nested by their ranges: `children[i]` are the edits directly inside edit `i`.
struct Nesting {
    edits: Vec<Edit>,
    children: Vec<Vec<usize>>,
    roots: Vec<usize>,
}

impl Nesting {
    fn new(mut edits: Vec<Edit>) -> Self {
        // Outer edits first: by start, then empty insertions (they enclose nothing), then the
        // longer range, then the rank.
        edits.sort_by_key(|e| {
            (
                e.range.start,
                !e.range.is_empty(),
                std::cmp::Reverse(e.range.end),
                e.rank,
            )
        });
        let mut children = vec![Vec::new(); edits.len()];
        let mut roots = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        for i in 0..edits.len() {
            let r = &edits[i].range;
            while let Some(&top) = stack.last() {
                let t = &edits[top].range;
                if !t.is_empty() && t.start <= r.start && r.end <= t.end {
                    break;
                }
                stack.pop();
            }
            match stack.last() {
                Some(&top) => children[top].push(i),
                None => roots.push(i),
            }
            stack.push(i);
        }
        Nesting { edits, children, roots }
    }

    /// The source of `range` with the edits `inside` applied.
    fn render(
        &self,
        source: &str,
        range: Range<usize>,
        inside: &[usize],
        out: &mut String,
        blame: &mut Vec<(Range<usize>, Vec<usize>)>,
    ) {
        let mut pos = range.start;
        for &i in inside {
            let edit = &self.edits[i];
            out.push_str(&source[pos..edit.range.start]);
            let start = out.len();
            self.render_pieces(source, i, &edit.pieces, out, blame);
            blame.push((start..out.len(), edit.mutants.clone()));
            pos = edit.range.end;
        }
        out.push_str(&source[pos..range.end]);
    }

    fn render_pieces(
        &self,
        source: &str,
        i: usize,
        pieces: &[Piece],
        out: &mut String,
        blame: &mut Vec<(Range<usize>, Vec<usize>)>,
    ) {
        let edit = &self.edits[i];
        for piece in pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Branch(id, inner) => {
                    let start = out.len();
                    self.render_pieces(source, i, inner, out, blame);
                    blame.push((start..out.len(), vec![*id]));
                }
                Piece::Hole(h) => {
                    let hole = edit.holes[*h].clone();
                    let inside: Vec<usize> = self.children[i]
                        .iter()
                        .copied()
                        .filter(|&c| {
                            let r = &self.edits[c].range;
                            hole.start <= r.start && r.end <= hole.end
                        })
                        .collect();
                    self.render(source, hole, &inside, out, blame);
                }
            }
        }
    }
}

/// Rewrites `source` (the file `file`) with the schemata of `mutants` (all of this file), except
/// those in `excluded`.
pub fn rewrite(
    file: &str,
    source: &str,
    mutants: &[NumberedMutant],
    excluded: &HashMap<usize, String>,
    keep_const: &HashSet<String>,
) -> anyhow::Result<RewrittenFile> {
    let syntax = syn::parse_file(source).map_err(|e| anyhow::anyhow!("{file}: does not parse: {e}"))?;
    let mut collector = Collector {
        lines: LineIndex::new(source),
        binary: HashMap::new(),
        unary: HashMap::new(),
        fn_body: HashMap::new(),
        arm: HashMap::new(),
        guard: HashMap::new(),
        unfit: HashMap::new(),
        const_depth: 0,
        keep_const,
        const_fns: Vec::new(),
        current_const_fn: None,
        owner: HashMap::new(),
    };
    collector.visit_file(&syntax);

    let mut placements = Vec::new();
    // Each site's mutants, in list order, keyed by (genre, position).
    let mut by_site: Vec<(&Site, Vec<(usize, String)>)> = Vec::new();
    let mut site_index: HashMap<(&str, ListedPosition), usize> = HashMap::new();
    let mut demoted = HashSet::new();
    for NumberedMutant { id, mutant } in mutants {
        if let Some(why) = excluded.get(id) {
            placements.push((*id, Placement::NotRewritten(why.clone())));
            continue;
        }
        let at = mutant.span.start;
        let (key, map) = match mutant.genre.as_str() {
            "BinaryOperator" => ("binary", &collector.binary),
            "UnaryOperator" => ("unary", &collector.unary),
            "FnValue" => ("fn", &collector.fn_body),
            "MatchArm" => ("arm", &collector.arm),
            "MatchArmGuard" => ("guard", &collector.guard),
            other => {
                placements.push((*id, Placement::NotRewritten(format!("a {other} mutant has no schema"))));
                continue;
            }
        };
        let Some(site) = map.get(&at) else {
            let why = collector
                .unfit
                .get(&at)
                .map_or("no syntax of its kind at its position", |why| why);
            placements.push((*id, Placement::NotRewritten(why.to_string())));
            continue;
        };
        let index = *site_index.entry((key, at)).or_insert_with(|| {
            by_site.push((site, Vec::new()));
            by_site.len() - 1
        });
        by_site[index].1.push((*id, mutant.replacement.clone()));
        placements.push((*id, Placement::Rewritten));
        if let Some(&owner) = collector.owner.get(&(key, at)) {
            demoted.insert(owner);
        }
    }

    let mut edits: Vec<Edit> = by_site.iter().flat_map(|(site, ms)| edits_of(site, ms)).collect();
    // The `const` of each const fn that holds a rewritten mutant goes.
    edits.extend(demoted.into_iter().map(|owner| Edit {
        range: collector.const_fns[owner].clone(),
        holes: vec![],
        pieces: vec![],
        mutants: vec![],
        rank: 0,
    }));
    let nesting = Nesting::new(edits);
    let mut text = String::with_capacity(source.len() * 2);
    let mut blame = Vec::new();
    nesting.render(source, 0..source.len(), &nesting.roots, &mut text, &mut blame);
    Ok(RewrittenFile {
        text,
        placements,
        blame,
    })
}

/// The module every rewritten crate gets: reads which mutant is active (`RESCA_MUTANT`, a
/// number) once, and in trace mode (`RESCA_MUTANT=trace`) appends each site reached to the
/// file `RESCA_MUTANT_TRACE` the first time it is reached, and keeps every mutant off.
pub fn switch_module(count: usize) -> String {
    format!(
        r#"//! Mutant schemata switch, written by resca-mutation into a mutated copy of the tree.
extern crate std;
use core::sync::atomic::{{AtomicBool, AtomicUsize, Ordering::Relaxed}};
use std::io::Write;

const COUNT: usize = {count};
const UNREAD: usize = usize::MAX;
const NONE: usize = usize::MAX - 1;
const TRACE: usize = usize::MAX - 2;
static ACTIVE: AtomicUsize = AtomicUsize::new(UNREAD);
static REACHED: [AtomicBool; COUNT] = [const {{ AtomicBool::new(false) }}; COUNT];

#[inline]
pub fn active(id: usize) -> bool {{
    let mut active = ACTIVE.load(Relaxed);
    if active == UNREAD {{
        active = read();
    }}
    if active == TRACE {{
        reach(id);
        return false;
    }}
    active == id
}}

#[cold]
fn read() -> usize {{
    let active = match std::env::var("RESCA_MUTANT").as_deref() {{
        Ok("trace") => TRACE,
        Ok(id) => id.parse().unwrap_or(NONE),
        Err(_) => NONE,
    }};
    ACTIVE.store(active, Relaxed);
    active
}}

#[cold]
fn reach(id: usize) {{
    if id < COUNT && !REACHED[id].swap(true, Relaxed) {{
        let path = std::env::var("RESCA_MUTANT_TRACE").expect("RESCA_MUTANT_TRACE names the trace file");
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("trace file opens");
        writeln!(file, "{{id}}").expect("trace file takes a line");
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, genre: &str, replacement: &str, line: usize, column: usize) -> ListedMutant {
        let at = ListedPosition { line, column };
        ListedMutant {
            name: name.into(),
            file: "k.rs".into(),
            genre: genre.into(),
            replacement: replacement.into(),
            span: ListedSpan { start: at, end: at },
        }
    }

    fn numbered(list: Vec<ListedMutant>) -> Vec<NumberedMutant> {
        list.into_iter()
            .enumerate()
            .map(|(id, mutant)| NumberedMutant { id, mutant })
            .collect()
    }

    /// `source` rewritten with every one of `mutants`, each of which must find its syntax.
    fn rewrite_every(source: &str, mutants: &[NumberedMutant]) -> RewrittenFile {
        let out = rewrite("k.rs", source, mutants, &HashMap::new(), &HashSet::new()).unwrap();
        assert!(
            out.placements.iter().all(|(_, p)| *p == Placement::Rewritten),
            "{:?}",
            out.placements
        );
        out
    }

    #[test]
    fn nested_binary_operators_rewrite_inside_out_and_keep_the_order_of_evaluation() {
        let source = "fn f(a: u32, b: u32) -> u32 {\n    a * b + 1\n}\n";
        let mutants = numbered(vec![
            listed("+ to -", "BinaryOperator", "-", 2, 11),
            listed("* to +", "BinaryOperator", "+", 2, 7),
            listed("f -> 0", "FnValue", "0", 2, 5),
        ]);
        let out = rewrite_every(source, &mutants);
        let expected = "fn f(a: u32, b: u32) -> u32 {\n    if crate::mutant_schemata::active(2) { return 0; } \
            (match (((match ((a), (b)) { (mutant_l, mutant_r) => if crate::mutant_schemata::active(1) { mutant_l + mutant_r } else { mutant_l * mutant_r } })), (1)) \
            { (mutant_l, mutant_r) => if crate::mutant_schemata::active(0) { mutant_l - mutant_r } else { mutant_l + mutant_r } })\n}\n";
        assert_eq!(out.text, expected);
        syn::parse_file(&out.text).unwrap();
    }

    #[test]
    fn comparisons_borrow_lazy_operators_short_circuit_and_assignments_write_the_place() {
        let source = "fn f(x: &mut [f32], i: usize, ok: bool) {\n    if ok && x[i] < 2.0 { x[i] += 1.0; }\n}\n";
        let mutants = numbered(vec![
            listed("&& to ||", "BinaryOperator", "||", 2, 11),
            listed("< to ==", "BinaryOperator", "==", 2, 19),
            listed("+= to -=", "BinaryOperator", "-=", 2, 32),
        ]);
        let out = rewrite("k.rs", source, &mutants, &HashMap::new(), &HashSet::new()).unwrap();
        let s = &out.text;
        assert!(
            s.contains(
                "(match (ok) { mutant_l => if crate::mutant_schemata::active(0) { mutant_l || ((match (&(x[i]), &(2.0))"
            ),
            "{s}"
        );
        assert!(
            s.contains("{ *mutant_l == *mutant_r } else { *mutant_l < *mutant_r }"),
            "{s}"
        );
        assert!(s.contains("(match (1.0) { mutant_r => if crate::mutant_schemata::active(2) { x[i] -= mutant_r } else { x[i] += mutant_r } })"), "{s}");
        syn::parse_file(s).unwrap();
    }

    #[test]
    fn const_contexts_and_unknown_kinds_are_left_out_with_a_reason() {
        let source = "const N: usize = 4 * 2;\nconst fn g() -> usize { 3 }\nfn h() -> [u8; 2 + 1] { [0; 3] }\n";
        let mutants = numbered(vec![
            listed("* in const", "BinaryOperator", "+", 1, 20),
            listed("g -> 0", "FnValue", "0", 2, 25),
            listed("+ in array length", "BinaryOperator", "-", 3, 18),
            listed("a field", "StructField", "", 3, 1),
        ]);
        let keep_const = HashSet::from(["g".to_string()]);
        let out = rewrite("k.rs", source, &mutants, &HashMap::new(), &keep_const).unwrap();
        assert_eq!(out.text, source);
        let reasons: Vec<String> = out
            .placements
            .iter()
            .map(|(_, p)| match p {
                Placement::NotRewritten(why) => why.clone(),
                Placement::Rewritten => "rewritten".into(),
            })
            .collect();
        assert!(reasons[0].contains("const context"), "{reasons:?}");
        assert!(reasons[1].contains("const fn"), "{reasons:?}");
        assert!(reasons[2].contains("const context"), "{reasons:?}");
        assert!(reasons[3].contains("no schema"), "{reasons:?}");
    }

    #[test]
    fn deleted_arms_fall_through_and_unary_operators_are_switched() {
        let source = "fn f(k: u8, b: bool) -> i32 {\n    match k { 0 => 1, 1 if b => -2, _ => 3 }\n}\n";
        let mutants = numbered(vec![
            listed("arm 0", "MatchArm", "", 2, 15),
            listed("arm 1", "MatchArm", "", 2, 23),
            listed("delete -", "UnaryOperator", "", 2, 33),
        ]);
        let out = rewrite("k.rs", source, &mutants, &HashMap::new(), &HashSet::new()).unwrap();
        let expected = "fn f(k: u8, b: bool) -> i32 {\n    match k { 0 if !crate::mutant_schemata::active(0) => 1, \
            1 if (!crate::mutant_schemata::active(1) && (b)) => (match (2) { mutant_e => if crate::mutant_schemata::active(2) { mutant_e } else { -mutant_e } }), _ => 3 }\n}\n";
        assert_eq!(out.text, expected);
    }

    #[test]
    fn a_guard_replaced_by_a_constant_and_its_arm_deleted_nest() {
        let source = "fn f(k: u8, b: bool) -> i32 {\n    match k { 1 if b => 2, _ => 3 }\n}\n";
        let mutants = numbered(vec![
            listed("guard true", "MatchArmGuard", "true", 2, 20),
            listed("guard false", "MatchArmGuard", "false", 2, 20),
            listed("arm 1", "MatchArm", "", 2, 15),
        ]);
        let out = rewrite_every(source, &mutants);
        // Only one mutant is on at a time, so either edit may enclose the other.
        let expected = "fn f(k: u8, b: bool) -> i32 {\n    match k { 1 if (if crate::mutant_schemata::active(0) { true } \
            else if crate::mutant_schemata::active(1) { false } else { (!crate::mutant_schemata::active(2) && (b)) }) => 2, _ => 3 }\n}\n";
        assert_eq!(out.text, expected);
    }

    #[test]
    fn a_const_fn_with_a_mutant_becomes_a_plain_fn_unless_a_const_context_calls_it() {
        let source = "pub const fn g(a: u32) -> u32 {\n    a * 2\n}\n";
        let mutants = numbered(vec![listed("* to +", "BinaryOperator", "+", 2, 7)]);
        let out = rewrite("k.rs", source, &mutants, &HashMap::new(), &HashSet::new()).unwrap();
        assert_eq!(out.placements, vec![(0, Placement::Rewritten)]);
        assert!(
            out.text
                .starts_with("pub  fn g(a: u32) -> u32 {\n    (match ((a), (2))"),
            "{}",
            out.text
        );
        let keep_const = HashSet::from(["g".to_string()]);
        let out = rewrite("k.rs", source, &mutants, &HashMap::new(), &keep_const).unwrap();
        assert_eq!(out.text, source);
        assert!(matches!(&out.placements[0].1, Placement::NotRewritten(why) if why.contains("const context")));
    }

    #[test]
    fn blame_names_the_innermost_mutant_of_a_position() {
        let source = "fn f(a: u32) -> u32 {\n    a + 1\n}\n";
        let mutants = numbered(vec![
            listed("f -> 0", "FnValue", "0", 2, 5),
            listed("+ to -", "BinaryOperator", "-", 2, 7),
        ]);
        let out = rewrite("k.rs", source, &mutants, &HashMap::new(), &HashSet::new()).unwrap();
        let at = out.text.find("return 0").unwrap();
        let innermost = out
            .blame
            .iter()
            .filter(|(r, _)| r.contains(&at))
            .min_by_key(|(r, _)| r.len())
            .unwrap();
        assert_eq!(innermost.1, vec![0]);
        let at = out.text.find("mutant_l - mutant_r").unwrap();
        let innermost = out
            .blame
            .iter()
            .filter(|(r, _)| r.contains(&at))
            .min_by_key(|(r, _)| r.len())
            .unwrap();
        assert_eq!(innermost.1, vec![1]);
    }
}

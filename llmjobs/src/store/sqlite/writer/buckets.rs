//! Multi-row statements, built for a few row counts so that a handful of prepared statements
//! serve every batch size.

use std::sync::OnceLock;

/// The row counts statements are built for.
const ROW_BUCKETS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// The statement `build` makes for `rows` rows (a bucket size), built once per bucket into
/// `cache`.
pub(super) fn bucket_sql(
    cache: &'static OnceLock<Vec<String>>,
    rows: usize,
    build: fn(usize) -> String,
) -> &'static str {
    let cache = cache.get_or_init(|| ROW_BUCKETS.iter().map(|&n| build(n)).collect());
    let index = ROW_BUCKETS
        .iter()
        .position(|&n| n == rows)
        .expect("a bucket size");
    &cache[index]
}

/// Splits `items` into chunks whose sizes are bucket sizes, largest first.
pub(super) fn buckets<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = *ROW_BUCKETS.iter().find(|&&n| n <= items.len())?;
        let (chunk, tail) = items.split_at(n);
        items = tail;
        Some(chunk)
    })
}

//! Exports `should-save(batch: u64)`: the right name, the wrong signature.

wit_bindgen::generate!({ path: "wit", world: "wrong:sig/save-interval" });

struct Wrong;

impl Guest for Wrong {
    fn should_save(batch: u64) -> bool {
        batch % 2 == 0
    }
}

export!(Wrong);

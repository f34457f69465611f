//! A component that implements neither cairn world (it exports only `hello`).

wit_bindgen::generate!({ path: "wit", world: "wrong:none/other" });

struct Other;

impl Guest for Other {
    fn hello() -> u32 {
        42
    }
}

export!(Other);

(component
  (core module $m
    (memory $m0 1)
    (memory $m1 1)
    (memory $m2 1)
    (memory $m3 1)
    (memory $m4 1)
    (memory $m5 1)
    (memory $m6 1)
    (memory $m7 1)
    (memory $m8 1)
    (memory $m9 1)
    (memory $m10 1)
    (memory $m11 1)
    (memory $m12 1)
    (memory $m13 1)
    (memory $m14 1)
    (memory $m15 1)
    (memory $m16 1)
    (memory $m17 1)
    (memory $m18 1)
    (memory $m19 1)
    (memory $m20 1)
    (memory $m21 1)
    (memory $m22 1)
    (memory $m23 1)
    (memory $m24 1)
    (memory $m25 1)
    (memory $m26 1)
    (memory $m27 1)
    (memory $m28 1)
    (memory $m29 1)
    (memory $m30 1)
    (memory $m31 1)
    (memory $m32 1)
    (memory $m33 1)
    (memory $m34 1)
    (memory $m35 1)
    (memory $m36 1)
    (memory $m37 1)
    (memory $m38 1)
    (memory $m39 1)
    (memory $m40 1)
    (memory $m41 1)
    (memory $m42 1)
    (memory $m43 1)
    (memory $m44 1)
    (memory $m45 1)
    (memory $m46 1)
    (memory $m47 1)
    (memory $m48 1)
    (memory $m49 1)
    (memory $m50 1)
    (memory $m51 1)
    (memory $m52 1)
    (memory $m53 1)
    (memory $m54 1)
    (memory $m55 1)
    (memory $m56 1)
    (memory $m57 1)
    (memory $m58 1)
    (memory $m59 1)
    (global $n (mut i32) (i32.const 0))
    (func (export "should-save") (param i32) (result i32) (local $p i32)
      (if (i32.eq (global.get $n) (i32.const 0)) (then
      (drop (memory.grow $m0 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm0
        (i32.store8 $m0 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm0 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 1)) (then
      (drop (memory.grow $m1 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm1
        (i32.store8 $m1 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm1 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 2)) (then
      (drop (memory.grow $m2 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm2
        (i32.store8 $m2 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm2 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 3)) (then
      (drop (memory.grow $m3 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm3
        (i32.store8 $m3 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm3 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 4)) (then
      (drop (memory.grow $m4 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm4
        (i32.store8 $m4 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm4 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 5)) (then
      (drop (memory.grow $m5 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm5
        (i32.store8 $m5 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm5 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 6)) (then
      (drop (memory.grow $m6 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm6
        (i32.store8 $m6 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm6 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 7)) (then
      (drop (memory.grow $m7 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm7
        (i32.store8 $m7 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm7 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 8)) (then
      (drop (memory.grow $m8 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm8
        (i32.store8 $m8 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm8 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 9)) (then
      (drop (memory.grow $m9 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm9
        (i32.store8 $m9 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm9 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 10)) (then
      (drop (memory.grow $m10 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm10
        (i32.store8 $m10 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm10 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 11)) (then
      (drop (memory.grow $m11 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm11
        (i32.store8 $m11 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm11 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 12)) (then
      (drop (memory.grow $m12 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm12
        (i32.store8 $m12 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm12 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 13)) (then
      (drop (memory.grow $m13 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm13
        (i32.store8 $m13 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm13 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 14)) (then
      (drop (memory.grow $m14 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm14
        (i32.store8 $m14 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm14 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 15)) (then
      (drop (memory.grow $m15 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm15
        (i32.store8 $m15 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm15 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 16)) (then
      (drop (memory.grow $m16 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm16
        (i32.store8 $m16 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm16 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 17)) (then
      (drop (memory.grow $m17 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm17
        (i32.store8 $m17 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm17 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 18)) (then
      (drop (memory.grow $m18 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm18
        (i32.store8 $m18 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm18 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 19)) (then
      (drop (memory.grow $m19 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm19
        (i32.store8 $m19 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm19 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 20)) (then
      (drop (memory.grow $m20 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm20
        (i32.store8 $m20 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm20 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 21)) (then
      (drop (memory.grow $m21 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm21
        (i32.store8 $m21 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm21 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 22)) (then
      (drop (memory.grow $m22 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm22
        (i32.store8 $m22 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm22 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 23)) (then
      (drop (memory.grow $m23 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm23
        (i32.store8 $m23 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm23 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 24)) (then
      (drop (memory.grow $m24 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm24
        (i32.store8 $m24 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm24 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 25)) (then
      (drop (memory.grow $m25 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm25
        (i32.store8 $m25 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm25 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 26)) (then
      (drop (memory.grow $m26 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm26
        (i32.store8 $m26 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm26 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 27)) (then
      (drop (memory.grow $m27 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm27
        (i32.store8 $m27 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm27 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 28)) (then
      (drop (memory.grow $m28 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm28
        (i32.store8 $m28 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm28 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 29)) (then
      (drop (memory.grow $m29 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm29
        (i32.store8 $m29 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm29 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 30)) (then
      (drop (memory.grow $m30 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm30
        (i32.store8 $m30 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm30 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 31)) (then
      (drop (memory.grow $m31 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm31
        (i32.store8 $m31 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm31 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 32)) (then
      (drop (memory.grow $m32 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm32
        (i32.store8 $m32 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm32 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 33)) (then
      (drop (memory.grow $m33 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm33
        (i32.store8 $m33 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm33 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 34)) (then
      (drop (memory.grow $m34 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm34
        (i32.store8 $m34 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm34 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 35)) (then
      (drop (memory.grow $m35 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm35
        (i32.store8 $m35 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm35 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 36)) (then
      (drop (memory.grow $m36 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm36
        (i32.store8 $m36 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm36 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 37)) (then
      (drop (memory.grow $m37 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm37
        (i32.store8 $m37 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm37 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 38)) (then
      (drop (memory.grow $m38 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm38
        (i32.store8 $m38 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm38 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 39)) (then
      (drop (memory.grow $m39 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm39
        (i32.store8 $m39 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm39 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 40)) (then
      (drop (memory.grow $m40 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm40
        (i32.store8 $m40 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm40 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 41)) (then
      (drop (memory.grow $m41 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm41
        (i32.store8 $m41 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm41 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 42)) (then
      (drop (memory.grow $m42 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm42
        (i32.store8 $m42 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm42 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 43)) (then
      (drop (memory.grow $m43 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm43
        (i32.store8 $m43 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm43 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 44)) (then
      (drop (memory.grow $m44 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm44
        (i32.store8 $m44 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm44 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 45)) (then
      (drop (memory.grow $m45 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm45
        (i32.store8 $m45 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm45 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 46)) (then
      (drop (memory.grow $m46 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm46
        (i32.store8 $m46 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm46 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 47)) (then
      (drop (memory.grow $m47 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm47
        (i32.store8 $m47 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm47 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 48)) (then
      (drop (memory.grow $m48 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm48
        (i32.store8 $m48 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm48 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 49)) (then
      (drop (memory.grow $m49 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm49
        (i32.store8 $m49 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm49 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 50)) (then
      (drop (memory.grow $m50 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm50
        (i32.store8 $m50 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm50 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 51)) (then
      (drop (memory.grow $m51 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm51
        (i32.store8 $m51 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm51 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 52)) (then
      (drop (memory.grow $m52 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm52
        (i32.store8 $m52 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm52 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 53)) (then
      (drop (memory.grow $m53 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm53
        (i32.store8 $m53 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm53 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 54)) (then
      (drop (memory.grow $m54 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm54
        (i32.store8 $m54 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm54 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 55)) (then
      (drop (memory.grow $m55 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm55
        (i32.store8 $m55 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm55 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 56)) (then
      (drop (memory.grow $m56 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm56
        (i32.store8 $m56 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm56 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 57)) (then
      (drop (memory.grow $m57 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm57
        (i32.store8 $m57 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm57 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 58)) (then
      (drop (memory.grow $m58 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm58
        (i32.store8 $m58 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm58 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (if (i32.eq (global.get $n) (i32.const 59)) (then
      (drop (memory.grow $m59 (i32.const 959)))
      (local.set $p (i32.const 0))
      (loop $lm59
        (i32.store8 $m59 (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 4096)))
        (br_if $lm59 (i32.lt_u (local.get $p) (i32.const 62914560))))))
      (global.set $n (i32.add (global.get $n) (i32.const 1)))
      (i32.const 0))
  )
  (core instance $i (instantiate $m))

  (type $event' (enum "batch" "epoch" "iteration"))
  (export $event "event" (type $event'))
  (func $f (param "event" $event) (result bool) (canon lift (core func $i "should-save")))
  (export "should-save" (func $f))
)

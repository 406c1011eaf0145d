// The fused preprocessing kernel: raw uint8 frame -> model input, in one pass.
//
// For every output pixel of every frame in the batch: find where it lands in the source
// (stretch / letterbox / shorter-side crop), read the four bilinear taps, convert each tap to RGB
// (yuv420p, nv12) or read it (rgb24, bgr24), blend, reorder channels, normalise with mean/std and
// write float32 / float16 / uint8 in NCHW or NHWC.
//
// It is the GPU twin of the numpy oracle (preprocess/_color.py preprocess_raw, which follows
// preprocess/_reference.py): every floating-point operation below is the oracle's, in the same
// order and precision. Compile with --fmad=false so no multiply-add is contracted, and the two
// agree to the last bit. Source coordinates are computed in double, as numpy does.

struct Params {
    const unsigned char* src;             // packed frame 0 of the batch (see _frames.py)
    unsigned long long src_frame_stride;  // bytes from one frame's packed planes to the next
    unsigned long long plane1_offset;     // byte offset of U (yuv420p) or UV (nv12)
    unsigned long long plane2_offset;     // byte offset of V (yuv420p)
    void* dst;                            // output element 0 of frame 0
    unsigned long long dst_frame_stride;  // elements from one output frame to the next
    double scale_y;                       // src_h / resized_h, computed in double by the host
    double scale_x;                       // src_w / resized_w
    int src_h, src_w;
    int out_h, out_w;
    int resized_h, resized_w;
    int offset_y, offset_x;               // top-left of the resized image in the output
    int chroma_pitch;                     // bytes per chroma row
    int dst_dtype;                        // 0 float32, 1 float16, 2 uint8
    int nhwc;                             // 0 NCHW, 1 NHWC
    int bgr_out;                          // 1: output channel 0 is blue
    int batch;
    float mean[3];                        // per output channel, 0..255 scale
    float std_[3];
    float pad[3];                         // letterbox border pixel per output channel, 0..255 scale
    float y_offset, y_scale, r_v, g_u, g_v, b_u;  // YuvCoefficients (unused for rgb/bgr)
};

enum { YUV420P = 0, NV12 = 1, RGB24 = 2, BGR24 = 3 };

struct Rgb { float r, g, b; };

__device__ __forceinline__ float clamp255(float v) {
    // np.clip(v, 0, 255) for finite v
    return fminf(fmaxf(v, 0.0f), 255.0f);
}

template <int FORMAT>
__device__ __forceinline__ Rgb load_rgb(const Params& p, const unsigned char* frame, int y, int x) {
    Rgb out;
    if (FORMAT == RGB24 || FORMAT == BGR24) {
        const unsigned char* px = frame + (size_t)y * (size_t)(3 * p.src_w) + (size_t)(3 * x);
        float c0 = (float)px[0], c1 = (float)px[1], c2 = (float)px[2];
        if (FORMAT == RGB24) { out.r = c0; out.g = c1; out.b = c2; }
        else { out.r = c2; out.g = c1; out.b = c0; }
        return out;
    }
    const float Y = (float)frame[(size_t)y * (size_t)p.src_w + (size_t)x];
    const size_t crow = (size_t)(y >> 1) * (size_t)p.chroma_pitch;
    float U, V;
    if (FORMAT == YUV420P) {
        U = (float)frame[p.plane1_offset + crow + (size_t)(x >> 1)];
        V = (float)frame[p.plane2_offset + crow + (size_t)(x >> 1)];
    } else {
        const unsigned char* uv = frame + p.plane1_offset + crow + (size_t)(2 * (x >> 1));
        U = (float)uv[0];
        V = (float)uv[1];
    }
    const float u = U - 128.0f;
    const float v = V - 128.0f;
    const float yv = (Y - p.y_offset) * p.y_scale;
    out.r = clamp255(yv + p.r_v * v);
    out.g = clamp255((yv - p.g_u * u) - p.g_v * v);
    out.b = clamp255(yv + p.b_u * u);
    return out;
}

// One axis of the bilinear sample: numpy's _axis_taps, in the same double arithmetic.
__device__ __forceinline__ void axis_tap(int r, double scale, int src, int* lo, int* hi, float* w) {
    double s = ((double)r + 0.5) * scale - 0.5;
    s = fmin(fmax(s, 0.0), (double)(src - 1));
    const double f = floor(s);
    *lo = (int)f;
    *hi = min(*lo + 1, src - 1);
    *w = (float)(s - f);
}

__device__ __forceinline__ float blend(float a, float b, float w) {
    // a * (1 - w) + b * w, each step rounded in float32 (numpy's order)
    return a * (1.0f - w) + b * w;
}

__device__ __forceinline__ float to_pixel(float v) {
    // the nearest integer, halves up: numpy's floor(v + 0.5) in float32 (an 8-bit resize's output)
    return floorf(v + 0.5f);
}

__device__ __forceinline__ unsigned short to_half_bits(float v) {
    // round-to-nearest-even, as numpy's astype(float16); no header needed under NVRTC
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

__device__ __forceinline__ void store(const Params& p, size_t index, float value) {
    if (p.dst_dtype == 0) {
        static_cast<float*>(p.dst)[index] = value;
    } else if (p.dst_dtype == 1) {
        static_cast<unsigned short*>(p.dst)[index] = to_half_bits(value);
    } else {
        static_cast<unsigned char*>(p.dst)[index] = (unsigned char)fminf(fmaxf(rintf(value), 0.0f), 255.0f);
    }
}

template <int FORMAT>
__device__ __forceinline__ void preprocess(const Params& p) {
    const int ox = blockIdx.x * blockDim.x + threadIdx.x;
    const int oy = blockIdx.y * blockDim.y + threadIdx.y;
    const int n = blockIdx.z;
    if (ox >= p.out_w || oy >= p.out_h || n >= p.batch) return;

    const int ry = oy - p.offset_y;
    const int rx = ox - p.offset_x;
    float value[3];
    if (ry < 0 || ry >= p.resized_h || rx < 0 || rx >= p.resized_w) {
        // Letterbox border: the pad pixel normalised like any pixel (the oracle's order). By
        // default the host passes pad = mean, which normalises to exactly 0.
        for (int c = 0; c < 3; ++c) value[c] = (p.pad[c] - p.mean[c]) / p.std_[c];
    } else {
        int y0, y1, x0, x1;
        float wy, wx;
        axis_tap(ry, p.scale_y, p.src_h, &y0, &y1, &wy);
        axis_tap(rx, p.scale_x, p.src_w, &x0, &x1, &wx);
        const unsigned char* frame = p.src + (size_t)n * p.src_frame_stride;
        const Rgb a = load_rgb<FORMAT>(p, frame, y0, x0);
        const Rgb b = load_rgb<FORMAT>(p, frame, y0, x1);
        const Rgb c = load_rgb<FORMAT>(p, frame, y1, x0);
        const Rgb d = load_rgb<FORMAT>(p, frame, y1, x1);
        const float r = to_pixel(blend(blend(a.r, b.r, wx), blend(c.r, d.r, wx), wy));
        const float g = to_pixel(blend(blend(a.g, b.g, wx), blend(c.g, d.g, wx), wy));
        const float bl = to_pixel(blend(blend(a.b, b.b, wx), blend(c.b, d.b, wx), wy));
        const float ordered[3] = {p.bgr_out ? bl : r, g, p.bgr_out ? r : bl};
        for (int ch = 0; ch < 3; ++ch) value[ch] = (ordered[ch] - p.mean[ch]) / p.std_[ch];
    }

    const size_t base = (size_t)n * p.dst_frame_stride;
    const size_t plane = (size_t)p.out_h * (size_t)p.out_w;
    const size_t pixel = (size_t)oy * (size_t)p.out_w + (size_t)ox;
    for (int c = 0; c < 3; ++c) {
        const size_t index = p.nhwc ? base + pixel * 3 + c : base + (size_t)c * plane + pixel;
        store(p, index, value[c]);
    }
}

extern "C" __global__ void preprocess_yuv420p(const Params p) { preprocess<YUV420P>(p); }
extern "C" __global__ void preprocess_nv12(const Params p) { preprocess<NV12>(p); }
extern "C" __global__ void preprocess_rgb24(const Params p) { preprocess<RGB24>(p); }
extern "C" __global__ void preprocess_bgr24(const Params p) { preprocess<BGR24>(p); }
